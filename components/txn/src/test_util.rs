//! An engine in a temporary directory that runs commands as the store would.

use engine::{Cf, Engine};

use crate::{
    reader::Bypass,
    types::{Lock, Modify},
    MvccReader, MvccTxn, Result,
};

pub(crate) struct Db {
    _dir: tempfile::TempDir,
    pub engine: Engine,
}

impl Db {
    pub fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        Db { _dir: dir, engine }
    }

    /// Runs one command: `f` reads a fresh snapshot and gathers writes, applied only if
    /// it succeeds.
    pub fn run<T>(&self, f: impl FnOnce(&mut MvccTxn, &MvccReader) -> Result<T>) -> Result<T> {
        let snap = self.engine.snapshot();
        let reader = MvccReader::new(&snap);
        let mut txn = MvccTxn::new();
        let out = f(&mut txn, &reader)?;
        let mut wb = self.engine.write_batch();
        for m in txn.into_modifies() {
            match m {
                Modify::Put { cf, key, value } => wb.put(cf, &key, &value),
                Modify::Delete { cf, key } => wb.delete(cf, &key),
            }
        }
        self.engine.write(wb, false).unwrap();
        Ok(out)
    }

    pub fn get(&self, key: &[u8], ts: u64) -> Result<Option<Vec<u8>>> {
        let snap = self.engine.snapshot();
        MvccReader::new(&snap).get(key, ts, &Bypass::default())
    }

    pub fn lock(&self, key: &[u8]) -> Option<Lock> {
        let snap = self.engine.snapshot();
        MvccReader::new(&snap).load_lock(key).unwrap()
    }

    pub fn count(&self, cf: Cf) -> usize {
        let mut n = 0;
        self.engine
            .scan(cf, b"", &[0xff], |_, _| {
                n += 1;
                Ok(true)
            })
            .unwrap();
        n
    }
}

/// A snapshot that counts the records its scans visit in each column family.
pub(crate) struct Counting<'a> {
    pub inner: engine::Snapshot<'a>,
    pub visited: std::cell::RefCell<std::collections::HashMap<Cf, usize>>,
}

impl<'a> Counting<'a> {
    pub fn new(engine: &'a Engine) -> Self {
        Counting {
            inner: engine.snapshot(),
            visited: Default::default(),
        }
    }

    pub fn visited(&self, cf: Cf) -> usize {
        self.visited.borrow().get(&cf).copied().unwrap_or(0)
    }
}

impl crate::Snapshot for Counting<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        crate::Snapshot::get(&self.inner, cf, key)
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        f: &mut crate::snapshot::ScanFn<'_>,
    ) -> Result<()> {
        crate::Snapshot::scan(&self.inner, cf, start, end, reverse, &mut |k, v| {
            *self.visited.borrow_mut().entry(cf).or_default() += 1;
            f(k, v)
        })
    }
}
