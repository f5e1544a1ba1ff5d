//! PD's metadata: the cluster record, stores, regions, the id window and the timestamp
//! bound. Reads come from this member's applied copy (in its RocksDB); writes are
//! replicated through the PD group and return once applied here, so the leader reads its
//! own writes.

use std::sync::Arc;

use engine::{Cf, Engine};
use keys::pd as k;
use proto::{
    metapb,
    pd_memberpb::{Command, KvOp},
};
use protobuf::Message;

use crate::{
    member::{delete, put},
    Error, Result,
};

/// How writes reach the metadata: through the PD group, as the leader of one term.
pub(crate) trait Replicate: Send + Sync {
    /// Commits `cmd` and applies it here; fails if this member no longer leads.
    fn write(&self, cmd: Command) -> Result<()>;
    /// Returns once a quorum has confirmed, after the call, that this member still leads.
    fn confirm_leader(&self) -> Result<()>;
}

/// PD's persistent metadata.
#[derive(Clone)]
pub struct Storage {
    engine: Engine,
    replicate: Arc<dyn Replicate>,
}

fn decode<M: Message>(what: &str, v: &[u8]) -> Result<M> {
    M::parse_from_bytes(v).map_err(|e| Error::Corrupted(format!("{what}: {e}")))
}

fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.write_to_bytes()
        .expect("encoding a protobuf message into memory cannot fail")
}

impl Storage {
    /// The metadata in `engine`, written through `replicate`.
    pub(crate) fn new(engine: Engine, replicate: Arc<dyn Replicate>) -> Storage {
        Storage { engine, replicate }
    }

    /// See [`Replicate::confirm_leader`].
    pub(crate) fn confirm_leader(&self) -> Result<()> {
        self.replicate.confirm_leader()
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
        self.write(vec![
            put(k::CLUSTER_KEY, encode(c)),
            put(&k::store_key(s.get_id()), encode(s)),
            put(&k::region_key(r.get_id()), encode(r)),
        ])
    }

    /// Forgets a region (merged away or replaced).
    pub fn delete_region(&self, id: u64) -> Result<()> {
        self.write(vec![delete(&k::region_key(id))])
    }

    /// Users, roles and signing keys, if any were ever saved.
    pub fn auth_state(&self) -> Result<Option<proto::authpb::AuthState>> {
        Ok(self.engine.get_msg(Cf::Default, k::AUTH_KEY)?)
    }

    /// Saves users, roles and signing keys.
    pub fn put_auth_state(&self, s: &proto::authpb::AuthState) -> Result<()> {
        self.put(k::AUTH_KEY, s)
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
        self.write(vec![put(key, v.to_be_bytes().to_vec())])
    }

    fn put<M: Message>(&self, key: &[u8], m: &M) -> Result<()> {
        self.write(vec![put(key, encode(m))])
    }

    fn write(&self, ops: Vec<KvOp>) -> Result<()> {
        let mut cmd = Command::default();
        cmd.set_ops(ops.into());
        self.replicate.write(cmd)
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

/// Writes straight to the engine, for unit tests of what sits on top of the metadata.
#[cfg(test)]
pub(crate) mod local {
    use std::{path::Path, sync::Arc};

    use engine::{Cf, Engine};
    use proto::pd_memberpb::Command;

    use super::{Replicate, Storage};
    use crate::Result;

    struct Local(Engine);

    impl Replicate for Local {
        fn write(&self, cmd: Command) -> Result<()> {
            let mut wb = self.0.write_batch();
            for op in cmd.get_ops() {
                match op.delete {
                    true => wb.delete(Cf::Default, op.get_key()),
                    false => wb.put(Cf::Default, op.get_key(), op.get_value()),
                }
            }
            Ok(self.0.write(wb, true)?)
        }

        fn confirm_leader(&self) -> Result<()> {
            Ok(())
        }
    }

    /// Metadata in `dir` without a group.
    pub(crate) fn open(dir: &Path) -> Storage {
        let engine = Engine::open_with(dir, &engine::EngineOptions::small()).expect("open");
        Storage::new(engine.clone(), Arc::new(Local(engine)))
    }
}
