//! Manifests (a tree as path → entry), the tree token that identifies one, and the diff that
//! turns a base manifest into the ops bringing the sink up to date.

use std::collections::{BTreeMap, HashSet};

use crate::wire::{Entry, EntryKind, Hash};

/// A tree: entries by path, in path order.
pub type Manifest = BTreeMap<String, EntryKind>;

/// The token of a tree: a hash over its entries in path order. Source and sink compute it the
/// same way, so equal tokens mean equal trees.
pub fn token<'a>(entries: impl IntoIterator<Item = (&'a String, &'a EntryKind)>) -> Hash {
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
    for (path, kind) in current {
        let forced = force.contains(path);
        match base.get(path) {
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
    for (path, kind) in base.iter().rev() {
        if !current.contains_key(path) {
            if excluded(path, matches!(kind, EntryKind::Dir)) {
                d.forgets.push(path.clone());
            } else {
                d.deletes.push(path.clone());
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

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
