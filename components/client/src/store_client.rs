//! A store's gRPC client with the headers every call of this client carries (a user's
//! token, or an operator's cluster secret). Key-value requests go on its batch stream;
//! the few calls BatchCommands does not carry (hashes, probes) are unary.

use std::sync::Arc;

use grpcio::CallOption;
use proto_grpc::tikvpb_grpc::TikvClient;
use util::security::Credentials;

use crate::batch::{BatchStream, Batched};

/// A store's client and the call options its calls use.
#[derive(Clone)]
pub(crate) struct StoreClient {
    client: TikvClient,
    opt: CallOption,
    batch: Arc<BatchStream>,
}

impl StoreClient {
    /// `client`, whose calls carry the headers of `creds`.
    pub(crate) fn new(client: TikvClient, creds: &Credentials) -> StoreClient {
        let opt = creds.call_option(CallOption::default());
        StoreClient {
            batch: Arc::new(BatchStream::new(client.clone(), opt.clone())),
            client,
            opt,
        }
    }

    /// The options of a unary call.
    pub(crate) fn opt(&self) -> CallOption {
        self.opt.clone()
    }

    /// Sends `req` on the store's batch stream and waits for its answer.
    pub(crate) async fn call<R: Batched>(&self, req: R) -> grpcio::Result<R::Resp> {
        self.batch.call(req).await
    }
}

impl std::ops::Deref for StoreClient {
    type Target = TikvClient;

    fn deref(&self) -> &TikvClient {
        &self.client
    }
}
