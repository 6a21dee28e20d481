//! Manifests (a tree as path → entry), the tree token that identifies one, and the diff that
//! turns a base manifest into the ops bringing the sink up to date.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::wire::{Entry, EntryKind, Hash};

/// A tree: entries by path, in path order.
pub type Manifest = BTreeMap<String, EntryKind>;

/// The token of a tree: a hash over its entries in path order. Source and sink compute it the
/// same way, so equal tokens mean equal trees.
pub fn token<'a>(entries: impl IntoIterator<Item = (&'a String, &'a EntryKind)>) -> Hash {
    // The entries are framed into a buffer that is hashed in large blocks (many tiny `update`
    // calls cost 10× more); the bytes hashed, and so the token, are the same either way.
    const FLUSH: usize = 256 << 10;
    let mut h = blake3::Hasher::new();
    let mut buf = Vec::with_capacity(FLUSH + 4096);
    for (path, kind) in entries {
        buf.extend_from_slice(&(path.len() as u64).to_le_bytes());
        buf.extend_from_slice(path.as_bytes());
        match kind {
            EntryKind::Dir => buf.push(b'd'),
            EntryKind::File {
                size,
                mode,
                mtime_ns,
                digest,
            } => {
                buf.push(b'f');
                buf.extend_from_slice(&size.to_le_bytes());
                buf.extend_from_slice(&mode.to_le_bytes());
                buf.extend_from_slice(&mtime_ns.to_le_bytes());
                buf.extend_from_slice(digest);
            }
            EntryKind::Symlink { target } => {
                buf.push(b'l');
                buf.extend_from_slice(&(target.len() as u64).to_le_bytes());
                buf.extend_from_slice(target.as_bytes());
            }
        }
        if buf.len() >= FLUSH {
            h.update(&buf);
            buf.clear();
        }
    }
    h.update(&buf);
    *h.finalize().as_bytes()
}

/// Build a manifest from entries.
pub fn from_entries(entries: impl IntoIterator<Item = Entry>) -> Manifest {
    entries.into_iter().map(|e| (e.path, e.kind)).collect()
}

/// Entries of a manifest, in path order.
pub fn to_entries(m: &Manifest) -> Vec<Entry> {
    m.iter()
        .map(|(p, k)| Entry {
            path: p.clone(),
            kind: k.clone(),
        })
        .collect()
}

/// What differs between the sink's tree (`base`) and the source's (`current`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Paths to create or update, in path order (parents before children). `true` when the
    /// file's content may be missing on the sink (its chunk list must be sent).
    pub upserts: Vec<(String, bool)>,
    /// Paths to delete, children before parents.
    pub deletes: Vec<String>,
    /// Paths the sink tracks that are now excluded: forgotten, neither sent nor deleted.
    pub forgets: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty() && self.forgets.is_empty()
    }
}

/// Compare manifests. `force` lists paths the sink reported changed on its side: they are sent
/// again with content. `excluded` protects base paths from deletion (excluded paths are
/// neither sent nor deleted).
pub fn diff(
    base: &Manifest,
    current: &Manifest,
    force: &HashSet<String>,
    excluded: impl Fn(&str, bool) -> bool,
) -> Diff {
    let mut d = Diff::default();
    // Both maps iterate in path order: one merge pass, no lookups.
    let mut gone = Vec::new();
    let mut old_iter = base.iter().peekable();
    for (path, kind) in current {
        while let Some((old_path, old_kind)) = old_iter.next_if(|(p, _)| *p < path) {
            gone.push((old_path, old_kind));
        }
        let old = old_iter.next_if(|(p, _)| *p == path).map(|(_, k)| k);
        let forced = !force.is_empty() && force.contains(path);
        match old {
            Some(old) if old == kind && !forced => {}
            Some(EntryKind::File { digest: old, .. }) if !forced => {
                let content = !matches!(kind, EntryKind::File { digest, .. } if digest == old);
                d.upserts.push((path.clone(), content));
            }
            _ => d
                .upserts
                .push((path.clone(), matches!(kind, EntryKind::File { .. }))),
        }
    }
    gone.extend(old_iter);
    // Children before parents: reverse path order.
    for (path, kind) in gone.into_iter().rev() {
        if excluded(path, matches!(kind, EntryKind::Dir)) {
            d.forgets.push(path.clone());
        } else {
            d.deletes.push(path.clone());
        }
    }
    d
}

/// Whether a directory above `path` is in `dirs`.
pub fn under_any(dirs: &HashSet<&str>, path: &str) -> bool {
    let mut at = path;
    while let Some(i) = at.rfind('/') {
        at = &at[..i];
        if dirs.contains(at) {
            return true;
        }
    }
    false
}

/// Renames: upserted paths the sink can build by renaming a path the same diff deletes, as
/// new path → deleted path. A new directory moves from a deleted one when every path under the
/// deleted one has a counterpart of the same kind under the new one (a renamed directory,
/// maybe with edits: what differs follows as ops of its own), found through a file of equal
/// content at the same relative path; what is under a moved directory moves with it. A file
/// with new content moves from a deleted file of the same content (one of the same name
/// first). Paths in `force` (changed on the sink's side) never serve.
pub fn moves(
    base: &Manifest,
    current: &Manifest,
    d: &Diff,
    force: &HashSet<String>,
) -> HashMap<String, String> {
    let deleted: HashSet<&str> = d
        .deletes
        .iter()
        .map(String::as_str)
        .filter(|p| !force.contains(*p))
        .collect();
    let mut by_digest: HashMap<&Hash, Vec<&str>> = HashMap::new();
    for p in &deleted {
        if let Some(EntryKind::File { digest, .. }) = base.get(*p) {
            by_digest.entry(digest).or_default().push(p);
        }
    }
    for v in by_digest.values_mut() {
        v.sort_unstable();
    }
    let mut out = HashMap::new();
    // Deleted paths taken, with everything under a directory that moves.
    let mut used: HashSet<&str> = HashSet::new();
    let mut moved: HashSet<&str> = HashSet::new();
    for (p, _) in &d.upserts {
        if base.contains_key(p)
            || !matches!(current.get(p), Some(EntryKind::Dir))
            || under_any(&moved, p)
        {
            continue;
        }
        let prefix = format!("{p}/");
        let from = current
            .range(prefix.clone()..)
            .take_while(|(q, _)| q.starts_with(&prefix))
            .filter_map(|(q, k)| match k {
                EntryKind::File { digest, .. } => Some((&q[prefix.len()..], digest)),
                _ => None,
            })
            .take(16)
            .find_map(|(rel, digest)| {
                by_digest.get(digest)?.iter().find_map(|cand| {
                    let dir = cand.strip_suffix(rel)?.strip_suffix('/')?;
                    (deleted.contains(dir)
                        && !used.contains(dir)
                        && matches!(base.get(dir), Some(EntryKind::Dir))
                        && subtree_fits(base, current, dir, p, force))
                    .then_some(dir)
                })
            });
        if let Some(from) = from {
            let from_prefix = format!("{from}/");
            used.insert(from);
            used.extend(
                base.range(from_prefix.clone()..)
                    .take_while(|(q, _)| q.starts_with(&from_prefix))
                    .map(|(q, _)| q.as_str()),
            );
            moved.insert(p.as_str());
            out.insert(p.clone(), from.to_string());
        }
    }
    for (p, content) in &d.upserts {
        let Some(EntryKind::File { digest, .. }) = current.get(p) else {
            continue;
        };
        if !content || under_any(&moved, p) {
            continue;
        }
        let Some(cands) = by_digest.get(digest) else {
            continue;
        };
        let name = |q: &str| q.rsplit('/').next().unwrap_or(q).to_string();
        let free = |q: &&&str| !used.contains(**q);
        let from = cands
            .iter()
            .filter(free)
            .find(|q| name(q) == name(p))
            .or_else(|| cands.iter().find(free))
            .copied();
        if let Some(from) = from {
            used.insert(from);
            out.insert(p.clone(), from.to_string());
        }
    }
    out
}

/// What the directory moves of a diff stand for: every path under a moved directory that is
/// the same (kind, content, metadata) as its counterpart under the directory it moves from.
/// Neither its upsert nor the counterpart's delete is sent: the sink's move of the directory
/// makes them. Should the sink refuse a move, both are sent after all (see [`Op::Move`]).
///
/// [`Op::Move`]: crate::wire::Op::Move
#[derive(Debug, Default)]
pub struct Implied {
    /// Upserted path → the moved directory that stands for it.
    pub upserts: HashMap<String, String>,
    /// Deleted path → the moved directory that stands for its delete.
    pub deletes: HashMap<String, String>,
}

/// The paths the directory moves in `moves` (from [`moves`]) stand for.
pub fn implied(
    base: &Manifest,
    current: &Manifest,
    moves: &HashMap<String, String>,
    d: &Diff,
) -> Implied {
    let mut out = Implied::default();
    let dirs: Vec<(&String, &String)> = moves
        .iter()
        .filter(|(to, _)| matches!(current.get(*to), Some(EntryKind::Dir)))
        .collect();
    if dirs.is_empty() {
        return out;
    }
    let deleted: HashSet<&str> = d.deletes.iter().map(String::as_str).collect();
    for (to, from) in dirs {
        let prefix = format!("{to}/");
        for (p, kind) in current
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
        {
            let old = format!("{from}/{}", &p[prefix.len()..]);
            if moves.contains_key(p) || !deleted.contains(old.as_str()) {
                continue;
            }
            if base.get(&old) == Some(kind) {
                out.upserts.insert(p.clone(), to.clone());
                out.deletes.insert(old, to.clone());
            }
        }
    }
    out
}

/// Whether every path under `from` in `base` has a counterpart of the same kind under `to` in
/// `current`, none of them changed on the sink's side.
fn subtree_fits(
    base: &Manifest,
    current: &Manifest,
    from: &str,
    to: &str,
    force: &HashSet<String>,
) -> bool {
    let prefix = format!("{from}/");
    base.range(prefix.clone()..)
        .take_while(|(p, _)| p.starts_with(&prefix))
        .all(|(p, kind)| {
            let there = current.get(&format!("{to}/{}", &p[prefix.len()..]));
            !force.contains(p)
                && matches!(
                    (kind, there),
                    (EntryKind::Dir, Some(EntryKind::Dir))
                        | (EntryKind::File { .. }, Some(EntryKind::File { .. }))
                        | (EntryKind::Symlink { .. }, Some(EntryKind::Symlink { .. }))
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token as first defined: one `update` per field. Buffering must not change it.
    fn token_unbuffered<'a>(
        entries: impl IntoIterator<Item = (&'a String, &'a EntryKind)>,
    ) -> Hash {
        let mut h = blake3::Hasher::new();
        for (path, kind) in entries {
            h.update(&(path.len() as u64).to_le_bytes());
            h.update(path.as_bytes());
            match kind {
                EntryKind::Dir => {
                    h.update(b"d");
                }
                EntryKind::File {
                    size,
                    mode,
                    mtime_ns,
                    digest,
                } => {
                    h.update(b"f");
                    h.update(&size.to_le_bytes());
                    h.update(&mode.to_le_bytes());
                    h.update(&mtime_ns.to_le_bytes());
                    h.update(digest);
                }
                EntryKind::Symlink { target } => {
                    h.update(b"l");
                    h.update(&(target.len() as u64).to_le_bytes());
                    h.update(target.as_bytes());
                }
            }
        }
        *h.finalize().as_bytes()
    }

    #[test]
    fn buffered_token_equals_the_field_by_field_definition() {
        let mut m = Manifest::new();
        for i in 0..20_000u32 {
            let kind = match i % 3 {
                0 => EntryKind::Dir,
                1 => EntryKind::File {
                    size: i as u64,
                    mode: 0o644,
                    mtime_ns: -(i as i64),
                    digest: [i as u8; 32],
                },
                _ => EntryKind::Symlink {
                    target: format!("../t{i}"),
                },
            };
            m.insert(format!("dir{}/entry-{i}", i % 97), kind);
        }
        assert_eq!(token(&m), token_unbuffered(&m));
        assert_eq!(token(&Manifest::new()), token_unbuffered(&Manifest::new()));
    }

    fn file(digest: u8, mtime: i64) -> EntryKind {
        EntryKind::File {
            size: 1,
            mode: 0o644,
            mtime_ns: mtime,
            digest: [digest; 32],
        }
    }

    #[test]
    fn diff_sends_content_only_when_the_digest_changes() {
        let base: Manifest = [
            ("a".to_string(), EntryKind::Dir),
            ("a/x".to_string(), file(1, 1)),
            ("a/y".to_string(), file(2, 1)),
            ("gone".to_string(), EntryKind::Dir),
            ("gone/f".to_string(), file(3, 1)),
            ("logs.txt".to_string(), file(4, 1)),
        ]
        .into();
        let cur: Manifest = [
            ("a".to_string(), EntryKind::Dir),
            ("a/x".to_string(), file(1, 2)),
            ("a/y".to_string(), file(9, 1)),
            ("new".to_string(), file(5, 1)),
        ]
        .into();
        let d = diff(&base, &cur, &HashSet::new(), |p, _| p == "logs.txt");
        assert_eq!(
            d.upserts,
            vec![
                ("a/x".into(), false),
                ("a/y".into(), true),
                ("new".into(), true)
            ]
        );
        assert_eq!(d.deletes, vec!["gone/f".to_string(), "gone".to_string()]);
        assert_eq!(d.forgets, vec!["logs.txt".to_string()]);
        let forced: HashSet<String> = ["a/x".to_string()].into();
        let d = diff(&base, &cur, &forced, |_, _| false);
        assert_eq!(d.upserts[0], ("a/x".into(), true));
        assert!(diff(&cur, &cur, &HashSet::new(), |_, _| false).is_empty());
    }

    #[test]
    fn token_depends_on_every_field() {
        let a: Manifest = [("x".to_string(), file(1, 1))].into();
        let b: Manifest = [("x".to_string(), file(1, 2))].into();
        let c: Manifest = [("y".to_string(), file(1, 1))].into();
        assert_ne!(token(&a), token(&b));
        assert_ne!(token(&a), token(&c));
        assert_eq!(token(&a), token(&a.clone()));
    }
}
