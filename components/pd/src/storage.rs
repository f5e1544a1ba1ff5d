//! PD's metadata on disk: the cluster record, stores, regions, the id window and the
//! timestamp bound. One RocksDB (through `engine`), synced writes.

use std::path::Path;

use engine::{Cf, Engine};
use keys::pd as k;
use proto::metapb;
use protobuf::Message;

use crate::{Error, Result};

/// PD's persistent metadata.
#[derive(Clone)]
pub struct Storage {
    engine: Engine,
}

fn decode<M: Message>(what: &str, v: &[u8]) -> Result<M> {
    M::parse_from_bytes(v).map_err(|e| Error::Corrupted(format!("{what}: {e}")))
}

impl Storage {
    /// Opens (creating if needed) PD's metadata under `dir`.
    pub fn open(dir: &Path) -> Result<Storage> {
        Ok(Storage {
            // PD's metadata is small; in a store with an embedded PD this database sits
            // beside the store's own, outside `[storage]`'s budget.
            engine: Engine::open_with(dir, &engine::EngineOptions::small())?,
        })
    }

    /// The cluster record, if the cluster exists.
    pub fn cluster(&self) -> Result<Option<metapb::Cluster>> {
        Ok(self.engine.get_msg(Cf::Default, k::CLUSTER_KEY)?)
    }

    /// Saves the cluster record.
    pub fn put_cluster(&self, c: &metapb::Cluster) -> Result<()> {
        self.put(k::CLUSTER_KEY, c)
    }

    /// Saves a store.
    pub fn put_store(&self, s: &metapb::Store) -> Result<()> {
        self.put(&k::store_key(s.get_id()), s)
    }

    /// Saves a region.
    pub fn put_region(&self, r: &metapb::Region) -> Result<()> {
        self.put(&k::region_key(r.get_id()), r)
    }

    /// Saves the cluster's first store and region together.
    pub fn bootstrap(
        &self,
        c: &metapb::Cluster,
        s: &metapb::Store,
        r: &metapb::Region,
    ) -> Result<()> {
        let mut wb = self.engine.write_batch();
        wb.put_msg(Cf::Default, k::CLUSTER_KEY, c);
        wb.put_msg(Cf::Default, &k::store_key(s.get_id()), s);
        wb.put_msg(Cf::Default, &k::region_key(r.get_id()), r);
        self.engine.write(wb, true)?;
        Ok(())
    }

    /// Forgets a region (merged away or replaced).
    pub fn delete_region(&self, id: u64) -> Result<()> {
        let mut wb = self.engine.write_batch();
        wb.delete(Cf::Default, &k::region_key(id));
        self.engine.write(wb, true)?;
        Ok(())
    }

    /// Every saved store.
    pub fn stores(&self) -> Result<Vec<metapb::Store>> {
        self.load(k::STORE_PREFIX, "store")
    }

    /// Every saved region.
    pub fn regions(&self) -> Result<Vec<metapb::Region>> {
        self.load(k::REGION_PREFIX, "region")
    }

    /// A saved u64 (id window end, timestamp bound).
    pub fn get_u64(&self, key: &[u8]) -> Result<Option<u64>> {
        match self.engine.get(Cf::Default, key)? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupted(format!("{key:?} is not a u64")))?;
                Ok(Some(u64::from_be_bytes(b)))
            }
        }
    }

    /// Saves a u64, durably.
    pub fn put_u64(&self, key: &[u8], v: u64) -> Result<()> {
        let mut wb = self.engine.write_batch();
        wb.put(Cf::Default, key, &v.to_be_bytes());
        self.engine.write(wb, true)?;
        Ok(())
    }

    fn put<M: Message>(&self, key: &[u8], m: &M) -> Result<()> {
        let mut wb = self.engine.write_batch();
        wb.put_msg(Cf::Default, key, m);
        self.engine.write(wb, true)?;
        Ok(())
    }

    fn load<M: Message>(&self, prefix: &[u8], what: &str) -> Result<Vec<M>> {
        let mut out = vec![];
        let mut bad = None;
        self.engine
            .scan(Cf::Default, prefix, &k::prefix_end(prefix), |_, v| {
                match decode(what, v) {
                    Ok(m) => out.push(m),
                    Err(e) => bad = Some(e),
                }
                Ok(bad.is_none())
            })?;
        match bad {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}
