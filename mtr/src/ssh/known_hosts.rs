//! OpenSSH's `known_hosts` as plain functions over text and key blobs: parsing (markers,
//! hashed `|1|salt|hash` names, `[host]:port`, wildcard and negated patterns), the lookup of a
//! server's key the way `ssh` decides (known, revoked, changed, unknown), fingerprints, and the
//! line to record a new key. No I/O: [`super`] reads and writes the file.
//!
//! libssh2's own `KnownHosts` is not used: it cannot say which line matched, stops reading at
//! the first line it does not understand (`@cert-authority`, `sk-` keys), ignores wildcards,
//! and matches a plain `host` entry for any port.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Digest as _;

/// The name OpenSSH records a host under: `host` on port 22, `[host]:port` otherwise.
pub(crate) fn known_hosts_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// The algorithm name at the head of an SSH public key blob (`ssh-ed25519`, ...).
pub(crate) fn key_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + len)?).ok()
}

/// OpenSSH's fingerprint of a key blob: `SHA256:` and the unpadded base64 of its SHA-256.
pub(crate) fn fingerprint(blob: &[u8]) -> String {
    format!(
        "SHA256:{}",
        STANDARD_NO_PAD.encode(sha2::Sha256::digest(blob))
    )
}

/// How `ssh` names a key type in messages: `ED25519`, `ECDSA`, `RSA`.
pub(crate) fn key_type_label(key_type: &str) -> String {
    match key_type {
        "ssh-ed25519" => "ED25519".into(),
        "ssh-rsa" => "RSA".into(),
        "ssh-dss" => "DSA".into(),
        t if t.starts_with("ecdsa-sha2-") => "ECDSA".into(),
        t => t.to_string(),
    }
}

/// One usable line of a known_hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownLine {
    /// 1-based line number.
    pub line: usize,
    pub revoked: bool,
    /// The host field: comma-separated patterns, or one `|1|salt|hash` hashed name.
    pub hosts: String,
    pub key_type: String,
    pub key: Vec<u8>,
}

/// Parses known_hosts text, skipping comments, `@cert-authority` lines and lines it cannot
/// read (as `ssh` does).
pub(crate) fn parse_known_hosts(text: &str) -> Vec<KnownLine> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let mut fields = raw.split_whitespace();
        let Some(mut first) = fields.next() else {
            continue;
        };
        if first.starts_with('#') {
            continue;
        }
        let mut revoked = false;
        if first.starts_with('@') {
            match first {
                "@revoked" => revoked = true,
                _ => continue,
            }
            let Some(next) = fields.next() else { continue };
            first = next;
        }
        let (Some(key_type), Some(key)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(key) = STANDARD.decode(key) else {
            continue;
        };
        out.push(KnownLine {
            line: i + 1,
            revoked,
            hosts: first.to_string(),
            key_type: key_type.to_string(),
            key,
        });
    }
    out
}

/// Whether a known_hosts host field names `name` (already in [`known_hosts_name`] form).
pub(crate) fn host_matches(hosts: &str, name: &str) -> bool {
    if let Some(hashed) = hosts.strip_prefix("|1|") {
        let Some((salt, hash)) = hashed.split_once('|') else {
            return false;
        };
        let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
            return false;
        };
        mac.update(name.as_bytes());
        return mac.verify_slice(&hash).is_ok();
    }
    let mut matched = false;
    for pattern in hosts.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if glob(&pattern.to_ascii_lowercase(), name) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

/// `*` and `?` wildcard match, as in OpenSSH host patterns.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// What known_hosts says about a server's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostStatus {
    /// The key is recorded for this host on `line`.
    Known { line: usize },
    /// The key is marked `@revoked` on `line`.
    Revoked { line: usize },
    /// `line` records another key of the same type for this host.
    Changed { line: usize },
    /// The host is not recorded with a key of this type; `other_types` are the types it is
    /// recorded with.
    Unknown { other_types: Vec<String> },
}

/// Looks up the server's key for `name` the way `ssh` does: a revoked key is refused, a
/// recorded key is accepted, another key of the same type means the key changed.
pub(crate) fn lookup(known: &[KnownLine], name: &str, key: &[u8]) -> HostStatus {
    let key_type = key_type(key).unwrap_or("");
    let mut found = None;
    let mut changed = None;
    let mut other_types = Vec::new();
    for entry in known.iter().filter(|e| host_matches(&e.hosts, name)) {
        if entry.revoked {
            if entry.key == key {
                return HostStatus::Revoked { line: entry.line };
            }
        } else if entry.key == key {
            found.get_or_insert(entry.line);
        } else if entry.key_type == key_type {
            changed.get_or_insert(entry.line);
        } else if !other_types.contains(&entry.key_type) {
            other_types.push(entry.key_type.clone());
        }
    }
    match (found, changed) {
        (Some(line), _) => HostStatus::Known { line },
        (None, Some(line)) => HostStatus::Changed { line },
        (None, None) => HostStatus::Unknown { other_types },
    }
}

/// Key types recorded for `name`, in file order.
pub(crate) fn known_types(known: &[KnownLine], name: &str) -> Vec<String> {
    let mut types: Vec<String> = Vec::new();
    for e in known
        .iter()
        .filter(|e| !e.revoked && host_matches(&e.hosts, name))
    {
        if !types.contains(&e.key_type) {
            types.push(e.key_type.clone());
        }
    }
    types
}

/// The host key algorithms to offer, best first: those of the key types already recorded for
/// the host (so a server with several host keys shows the one we know, as `ssh` arranges),
/// then ed25519, then the rest in libssh2's order.
pub(crate) fn hostkey_prefs(known_types: &[String], supported: &[&str]) -> String {
    let mut wanted: Vec<&str> = Vec::new();
    for t in known_types {
        match t.as_str() {
            "ssh-rsa" => wanted.extend(["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]),
            other => wanted.push(other),
        }
    }
    wanted.push("ssh-ed25519");
    let mut order: Vec<&str> = Vec::new();
    for alg in wanted.into_iter().chain(supported.iter().copied()) {
        if supported.contains(&alg) && !order.contains(&alg) {
            order.push(alg);
        }
    }
    order.join(",")
}

/// A known_hosts line recording `key` for `name`.
pub(crate) fn known_hosts_line(name: &str, key: &[u8]) -> String {
    format!(
        "{name} {} {}\n",
        key_type(key).unwrap_or("ssh-unknown"),
        STANDARD.encode(key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixtures made with ssh-keygen: two host keys with their fingerprints (`ssh-keygen -lf`),
    // and a known_hosts file hashed with `ssh-keygen -H` holding `gpu1` (ED25519) and
    // `[gpu1]:2222` (ECDSA).
    const ED25519: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIIXrEaf7v2jlv9LY4cFCvnI0UFRVGIt+3kycCQKz03pi";
    const ED25519_FP: &str = "SHA256:gDDgYZ8PuYHX7Ix2L5wP71t3uDzjuaIICue/w76WZG4";
    const ECDSA: &str = "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBIAFlaSfXeKyppi3IWHWdbGFP6Sc8TZ25/4NqO5tcJVRaraOegtqDozx4Nqy+xu6DE/kioz+59kpXhBa+hSM4IU=";
    const ECDSA_FP: &str = "SHA256:x6hMlk4Md5VxmcrUc38A9VMV8q60gnaoJa+vsjPauTQ";
    const OTHER_ED25519: &str =
        "AAAAC3NzaC1lZDI1NTE5AAAAILKt0qSJuVUn3khbwRvzg6YD37qTKv3jIHO3SZmohO2F";
    const HASHED_GPU1: &str = "|1|lSi1vf8b8/DEzLPVii5SELglJDY=|pqi7Ojbk0g9HRAe9L6CNquFg1Zs=";
    const HASHED_GPU1_2222: &str = "|1|d9DqXNJMWvh9ZPPMTH6wAiEWUIY=|OviaIVvgbHW1SV/Jv1Htg6M+ydY=";

    fn blob(b64: &str) -> Vec<u8> {
        STANDARD.decode(b64).unwrap()
    }

    fn file(lines: &[String]) -> Vec<KnownLine> {
        parse_known_hosts(&lines.join("\n"))
    }

    #[test]
    fn names_hosts_like_openssh() {
        assert_eq!(known_hosts_name("GPU1.example", 22), "gpu1.example");
        assert_eq!(known_hosts_name("gpu1", 2222), "[gpu1]:2222");
        assert_eq!(known_hosts_name("::1", 2222), "[::1]:2222");
    }

    #[test]
    fn fingerprints_match_ssh_keygen() {
        assert_eq!(fingerprint(&blob(ED25519)), ED25519_FP);
        assert_eq!(fingerprint(&blob(ECDSA)), ECDSA_FP);
        assert_eq!(key_type(&blob(ED25519)), Some("ssh-ed25519"));
        assert_eq!(key_type(&blob(ECDSA)), Some("ecdsa-sha2-nistp256"));
        assert_eq!(key_type(b"\0\0"), None);
        assert_eq!(key_type(b"\0\0\0\x09short"), None);
    }

    #[test]
    fn parses_markers_comments_and_skips_junk() {
        let text = format!(
            "# comment\n\ngpu1 ssh-ed25519 {ED25519}\n@cert-authority *.x ssh-ed25519 {ED25519}\n\
             @revoked bad ssh-ed25519 {ED25519}\ngarbage\nhost ssh-ed25519 not-base64!\n\
             gpu2,10.0.0.2 ecdsa-sha2-nistp256 {ECDSA} a comment\n"
        );
        let lines = parse_known_hosts(&text);
        let summary: Vec<_> = lines
            .iter()
            .map(|l| (l.line, l.revoked, l.hosts.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (3, false, "gpu1"),
                (5, true, "bad"),
                (8, false, "gpu2,10.0.0.2")
            ]
        );
        assert_eq!(lines[2].key, blob(ECDSA));
    }

    #[test]
    fn matches_plain_wildcard_negated_and_port_patterns() {
        assert!(host_matches("gpu1", "gpu1"));
        assert!(host_matches("GPU1", "gpu1"));
        assert!(!host_matches("gpu1", "[gpu1]:2222"));
        assert!(host_matches("[gpu1]:2222", "[gpu1]:2222"));
        assert!(!host_matches("[gpu1]:2222", "gpu1"));
        assert!(host_matches("gpu2,gpu1", "gpu1"));
        assert!(host_matches("gpu*.cluster", "gpu17.cluster"));
        assert!(host_matches("gpu?", "gpu7"));
        assert!(!host_matches("gpu?", "gpu17"));
        assert!(!host_matches("gpu*,!gpu13", "gpu13"));
        assert!(host_matches("gpu*,!gpu13", "gpu12"));
        assert!(!host_matches("!gpu1", "gpu1"));
    }

    #[test]
    fn matches_hashed_names_made_by_ssh_keygen() {
        assert!(host_matches(HASHED_GPU1, "gpu1"));
        assert!(!host_matches(HASHED_GPU1, "gpu2"));
        assert!(!host_matches(HASHED_GPU1, "[gpu1]:2222"));
        assert!(host_matches(HASHED_GPU1_2222, "[gpu1]:2222"));
        assert!(!host_matches(HASHED_GPU1_2222, "gpu1"));
        assert!(!host_matches("|1|garbage", "gpu1"));
        assert!(!host_matches("|1|!!|!!", "gpu1"));
    }

    #[test]
    fn known_key_is_accepted_with_its_line() {
        let known = file(&[
            format!("other ssh-ed25519 {OTHER_ED25519}"),
            format!("{HASHED_GPU1} ssh-ed25519 {ED25519}"),
        ]);
        assert_eq!(
            lookup(&known, "gpu1", &blob(ED25519)),
            HostStatus::Known { line: 2 }
        );
    }

    #[test]
    fn another_key_of_the_same_type_is_a_change() {
        let known = file(&[
            format!("{HASHED_GPU1_2222} ecdsa-sha2-nistp256 {ECDSA}"),
            format!("gpu1 ssh-ed25519 {OTHER_ED25519}"),
        ]);
        assert_eq!(
            lookup(&known, "gpu1", &blob(ED25519)),
            HostStatus::Changed { line: 2 }
        );
        // The same host on another port is another entry.
        assert_eq!(
            lookup(&known, "[gpu1]:2222", &blob(ED25519)),
            HostStatus::Unknown {
                other_types: vec!["ecdsa-sha2-nistp256".into()]
            }
        );
    }

    #[test]
    fn a_matching_line_wins_over_a_stale_one() {
        let known = file(&[
            format!("gpu1 ssh-ed25519 {OTHER_ED25519}"),
            format!("gpu1 ssh-ed25519 {ED25519}"),
        ]);
        assert_eq!(
            lookup(&known, "gpu1", &blob(ED25519)),
            HostStatus::Known { line: 2 }
        );
    }

    #[test]
    fn revoked_key_is_refused_even_if_also_known() {
        let known = file(&[
            format!("gpu1 ssh-ed25519 {ED25519}"),
            format!("@revoked * ssh-ed25519 {ED25519}"),
        ]);
        assert_eq!(
            lookup(&known, "gpu1", &blob(ED25519)),
            HostStatus::Revoked { line: 2 }
        );
    }

    #[test]
    fn unknown_host_lists_other_key_types() {
        assert_eq!(
            lookup(&[], "gpu1", &blob(ED25519)),
            HostStatus::Unknown {
                other_types: vec![]
            }
        );
        let known = file(&[format!("gpu1 ecdsa-sha2-nistp256 {ECDSA}")]);
        assert_eq!(
            lookup(&known, "gpu1", &blob(ED25519)),
            HostStatus::Unknown {
                other_types: vec!["ecdsa-sha2-nistp256".into()]
            }
        );
        assert_eq!(known_types(&known, "gpu1"), ["ecdsa-sha2-nistp256"]);
        assert!(known_types(&known, "gpu2").is_empty());
    }

    #[test]
    fn recorded_line_reads_back() {
        let line = known_hosts_line("[gpu1]:2222", &blob(ED25519));
        assert_eq!(line, format!("[gpu1]:2222 ssh-ed25519 {ED25519}\n"));
        let known = parse_known_hosts(&line);
        assert_eq!(
            lookup(&known, "[gpu1]:2222", &blob(ED25519)),
            HostStatus::Known { line: 1 }
        );
    }

    #[test]
    fn prefers_host_key_algorithms_already_known() {
        let supported = [
            "ecdsa-sha2-nistp256",
            "ssh-ed25519",
            "rsa-sha2-512",
            "rsa-sha2-256",
            "ssh-rsa",
        ];
        assert_eq!(
            hostkey_prefs(&[], &supported),
            "ssh-ed25519,ecdsa-sha2-nistp256,rsa-sha2-512,rsa-sha2-256,ssh-rsa"
        );
        assert_eq!(
            hostkey_prefs(&["ssh-rsa".into()], &supported),
            "rsa-sha2-512,rsa-sha2-256,ssh-rsa,ssh-ed25519,ecdsa-sha2-nistp256"
        );
        assert_eq!(
            hostkey_prefs(
                &["ecdsa-sha2-nistp256".into(), "sk-unknown".into()],
                &supported
            ),
            "ecdsa-sha2-nistp256,ssh-ed25519,rsa-sha2-512,rsa-sha2-256,ssh-rsa"
        );
    }

    #[test]
    fn glob_handles_backtracking() {
        assert!(glob("*a*b", "xaayb"));
        assert!(glob("*", ""));
        assert!(!glob("a*c", "abcd"));
        assert!(glob("a*c*", "abcd"));
    }
}
