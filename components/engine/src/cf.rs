use std::fmt;

/// A column family. An enum rather than a name, so that an unknown column family cannot
/// reach RocksDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cf {
    /// Raw key-value data.
    Default,
    /// Transaction locks, one per user key.
    Lock,
    /// Transaction commit and rollback records, newest version first.
    Write,
    /// Transaction values too long to inline in a lock or commit record.
    TxnValue,
    /// Raft logs, hard state, apply state, region state, store identity.
    Raft,
}

impl Cf {
    /// Every column family, in the order the database opens them.
    pub const ALL: [Cf; 5] = [Cf::Default, Cf::Lock, Cf::Write, Cf::TxnValue, Cf::Raft];
    /// The column families that hold user data, and move with a region's snapshot.
    pub const DATA: [Cf; 4] = [Cf::Default, Cf::Lock, Cf::Write, Cf::TxnValue];

    /// RocksDB's name for the column family.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Default => "default",
            Cf::Lock => "lock",
            Cf::Write => "write",
            Cf::TxnValue => "txn_value",
            Cf::Raft => "raft",
        }
    }

    /// Parses a column family name; `None` for names that are not ours.
    pub fn from_name(name: &str) -> Option<Cf> {
        Cf::ALL.into_iter().find(|cf| cf.name() == name)
    }

    /// Parses the name of a data column family as requests and snapshots carry it (empty
    /// means default); `None` for anything else, the Raft column family included.
    pub fn data_from_name(name: &str) -> Option<Cf> {
        let name = if name.is_empty() { "default" } else { name };
        Cf::from_name(name).filter(|cf| Cf::DATA.contains(cf))
    }
}

impl fmt::Display for Cf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
