//! What a role grants: read, write or both on a key, a prefix or a range of keys, and
//! `admin` (splits, moves, store deletion, the GC safe point, users and roles). A user
//! may do what any of its roles grants; the user `root` may do everything.

use crate::{Error, Result};

/// The user who may do everything (etcd's root): `kvctl auth enable` needs it.
pub const ROOT: &str = "root";

/// What a request does to keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads them.
    Read,
    /// Writes them.
    Write,
}

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Reads.
    Read,
    /// Writes.
    Write,
    /// Both.
    ReadWrite,
}

impl Kind {
    fn allows(self, a: Access) -> bool {
        matches!(
            (self, a),
            (Kind::ReadWrite, _) | (Kind::Read, Access::Read) | (Kind::Write, Access::Write)
        )
    }
}

/// Access of one kind to the keys in `[start, end)`; an empty `end` reaches the end of
/// the key space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// What it allows.
    pub kind: Kind,
    /// The first key.
    pub start: Vec<u8>,
    /// One past the last key; empty: no end.
    pub end: Vec<u8>,
}

/// The first key after every key that starts with `prefix`; empty if there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// The key right after `key`: `[key, after(key))` holds `key` alone.
fn after(key: &[u8]) -> Vec<u8> {
    let mut v = key.to_vec();
    v.push(0);
    v
}

impl Grant {
    /// `kind` on one key.
    pub fn key(kind: Kind, key: &[u8]) -> Result<Grant> {
        if key.is_empty() {
            return Err(Error::Invalid(
                "a permission on a key needs a key (for every key, use a prefix of \"\")".into(),
            ));
        }
        Ok(Grant {
            kind,
            start: key.to_vec(),
            end: after(key),
        })
    }

    /// `kind` on every key that starts with `prefix` (every key, for an empty one).
    pub fn prefix(kind: Kind, prefix: &[u8]) -> Grant {
        Grant {
            kind,
            start: prefix.to_vec(),
            end: prefix_end(prefix),
        }
    }

    /// `kind` on `[start, end)`; refused if `start` is not before a non-empty `end`.
    pub fn range(kind: Kind, start: &[u8], end: &[u8]) -> Result<Grant> {
        if !end.is_empty() && start >= end {
            return Err(Error::Invalid(format!(
                "permission range start {:?} must be before its end {:?}",
                String::from_utf8_lossy(start),
                String::from_utf8_lossy(end)
            )));
        }
        Ok(Grant {
            kind,
            start: start.to_vec(),
            end: end.to_vec(),
        })
    }
}

/// What one user may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Admin: placement, the GC safe point, users and roles.
    pub admin: bool,
    /// Everything: root, and the cluster's own processes.
    pub all: bool,
    grants: Vec<Grant>,
}

impl Permissions {
    /// Everything.
    pub fn all() -> Permissions {
        Permissions {
            admin: true,
            all: true,
            grants: vec![],
        }
    }

    /// The union of `grants`, and admin if `admin`.
    pub fn new(admin: bool, grants: Vec<Grant>) -> Permissions {
        Permissions {
            admin,
            all: false,
            grants,
        }
    }

    /// Whether every key of `[start, end)` (an empty `end`: to the end of the key space)
    /// may be accessed so.
    pub fn covers(&self, access: Access, start: &[u8], end: &[u8]) -> bool {
        if self.all {
            return true;
        }
        // A backwards range is no request anyone may make: refused, not vacuously true.
        if !end.is_empty() && start > end {
            return false;
        }
        let mut ranges: Vec<&Grant> = self
            .grants
            .iter()
            .filter(|g| g.kind.allows(access))
            .collect();
        ranges.sort_by(|a, b| a.start.cmp(&b.start));
        // Sweep the granted ranges in order, moving `covered` to the end of each one
        // that starts at or before it; a gap before `end` means not covered.
        let mut covered = start.to_vec();
        for g in ranges {
            if g.start > covered {
                break;
            }
            if g.end.is_empty() {
                return true;
            }
            if g.end > covered {
                covered = g.end.clone();
            }
            if !end.is_empty() && covered.as_slice() >= end {
                return true;
            }
        }
        !end.is_empty() && covered.as_slice() >= end
    }

    /// Whether `key` may be accessed so.
    pub fn covers_key(&self, access: Access, key: &[u8]) -> bool {
        self.covers(access, key, &after(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_cover_keys_prefixes_and_ranges_of_their_kind() {
        let p = Permissions::new(
            false,
            vec![
                Grant::prefix(Kind::Read, b"a/"),
                Grant::key(Kind::Write, b"a/x").unwrap(),
                Grant::range(Kind::ReadWrite, b"c", b"e").unwrap(),
                Grant::range(Kind::Read, b"e", b"f").unwrap(),
            ],
        );
        assert!(p.covers_key(Access::Read, b"a/x"));
        assert!(p.covers_key(Access::Write, b"a/x"));
        assert!(!p.covers_key(Access::Write, b"a/y"));
        assert!(!p.covers_key(Access::Read, b"b/x"));
        assert!(p.covers(Access::Read, b"a/", b"a0"), "the whole prefix");
        assert!(
            !p.covers(Access::Read, b"a/", b"c/"),
            "a gap between a/ and c"
        );
        assert!(p.covers(Access::Read, b"c", b"f"), "adjacent grants join");
        assert!(
            !p.covers(Access::Write, b"c", b"f"),
            "not of the kind asked"
        );
        assert!(
            !p.covers(Access::Read, b"c", b""),
            "no grant reaches the end"
        );
        assert!(Permissions::all().covers(Access::Write, b"", b""));
        let everything = Permissions::new(false, vec![Grant::prefix(Kind::Read, b"")]);
        assert!(everything.covers(Access::Read, b"", b""));
        assert!(!p.covers(Access::Read, b"a/y", b"a/x"), "backwards");
        assert!(Grant::range(Kind::Read, b"z", b"a").is_err());
        assert!(Grant::range(Kind::Read, b"a", b"a").is_err());
        assert!(Grant::key(Kind::Read, b"").is_err());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"");
    }

    proptest::proptest! {
        /// Over grants and requests with one-byte bounds, a range is covered exactly when
        /// each one-byte key in it is (every key between two such keys falls in the same
        /// grants as the lower one).
        #[test]
        fn coverage_is_what_each_key_allows(
            grants in proptest::collection::vec((0u8..5, 0u8..5, 0usize..3), 0..5),
            (s, e) in (0u8..4, 1u8..5),
        ) {
            proptest::prop_assume!(s < e);
            let kinds = [Kind::Read, Kind::Write, Kind::ReadWrite];
            let grants: Vec<Grant> = grants
                .into_iter()
                .filter_map(|(a, b, k)| Grant::range(kinds[k], &[a], &[b]).ok())
                .collect();
            let p = Permissions::new(false, grants.clone());
            let each = (s..e).all(|k| {
                grants.iter().any(|g| {
                    g.kind.allows(Access::Read) && g.start <= vec![k] && vec![k] < g.end
                })
            });
            proptest::prop_assert_eq!(p.covers(Access::Read, &[s], &[e]), each);
        }
    }
}
