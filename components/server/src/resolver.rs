//! Store id -> address, from PD, cached; and gRPC clients by address, cached.

use std::{collections::HashMap, sync::Arc, time::Duration};

use grpcio::Environment;
use parking_lot::Mutex;
use pd_client::PdClient;
use proto_grpc::tikvpb_grpc::TikvClient;
use util::security::Security;

use crate::Result;

/// Finds and dials other stores.
#[derive(Clone)]
pub struct Resolver {
    pd: Arc<PdClient>,
    env: Arc<Environment>,
    /// TLS for the channels to other stores.
    security: Arc<Security>,
    max_message_size: i32,
    /// Ping time and timeout of connections to other stores.
    keepalive: (Duration, Duration),
    addrs: Arc<Mutex<HashMap<u64, String>>>,
    clients: Arc<Mutex<HashMap<String, TikvClient>>>,
}

impl Resolver {
    /// Resolves through `pd`, dialing with `env` and `security`; messages up to
    /// `max_message_size`, connections pinged every `keepalive.0` and dropped after
    /// `keepalive.1` of silence.
    pub fn new(
        pd: Arc<PdClient>,
        env: Arc<Environment>,
        security: Arc<Security>,
        max_message_size: i32,
        keepalive: (Duration, Duration),
    ) -> Self {
        Resolver {
            pd,
            env,
            security,
            max_message_size,
            keepalive,
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
            // Pinged, also while a stream is idle (a hibernating region's), so that a
            // peer whose address went away fails the stream and is dialled afresh,
            // resolving its name again.
            let builder = util::grpc::channel(self.env.clone())
                .max_receive_message_len(self.max_message_size)
                .max_send_message_len(self.max_message_size)
                .keepalive_time(self.keepalive.0)
                .keepalive_timeout(self.keepalive.1)
                .http2_max_pings_without_data(0);
            let ch = self.security.connect(builder, &addr);
            TikvClient::new(ch)
        });
        Ok(client.clone())
    }

    /// The PD client behind this resolver.
    pub fn pd(&self) -> &Arc<PdClient> {
        &self.pd
    }
}
