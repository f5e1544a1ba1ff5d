//! Store id -> address, from PD, cached; and gRPC clients by address, cached.

use std::{collections::HashMap, sync::Arc};

use grpcio::{ChannelBuilder, Environment};
use parking_lot::Mutex;
use pd_client::PdClient;
use proto::tikvpb_grpc::TikvClient;

use crate::Result;

/// Finds and dials other stores.
#[derive(Clone)]
pub struct Resolver {
    pd: Arc<PdClient>,
    env: Arc<Environment>,
    max_message_size: i32,
    addrs: Arc<Mutex<HashMap<u64, String>>>,
    clients: Arc<Mutex<HashMap<String, TikvClient>>>,
}

impl Resolver {
    /// Resolves through `pd`, dialing with `env`; messages up to `max_message_size`.
    pub fn new(pd: Arc<PdClient>, env: Arc<Environment>, max_message_size: i32) -> Self {
        Resolver {
            pd,
            env,
            max_message_size,
            addrs: Arc::default(),
            clients: Arc::default(),
        }
    }

    /// The address of a store (cached after the first look-up).
    pub async fn address(&self, store_id: u64) -> Result<String> {
        if let Some(a) = self.addrs.lock().get(&store_id) {
            return Ok(a.clone());
        }
        let (store, _) = self.pd.get_store(store_id).await?;
        let addr = store.get_address().to_string();
        self.addrs.lock().insert(store_id, addr.clone());
        Ok(addr)
    }

    /// Forgets a store's address (after failing to reach it).
    pub fn forget(&self, store_id: u64) {
        if let Some(addr) = self.addrs.lock().remove(&store_id) {
            self.clients.lock().remove(&addr);
        }
    }

    /// A client for a store.
    pub async fn client(&self, store_id: u64) -> Result<TikvClient> {
        let addr = self.address(store_id).await?;
        let mut clients = self.clients.lock();
        let client = clients.entry(addr.clone()).or_insert_with(|| {
            let ch = ChannelBuilder::new(self.env.clone())
                .max_receive_message_len(self.max_message_size)
                .max_send_message_len(self.max_message_size)
                .connect(&addr);
            TikvClient::new(ch)
        });
        Ok(client.clone())
    }

    /// The PD client behind this resolver.
    pub fn pd(&self) -> &Arc<PdClient> {
        &self.pd
    }
}
