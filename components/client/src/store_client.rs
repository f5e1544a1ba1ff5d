//! A store's gRPC client with the headers every call of this client carries (a user's
//! token, or an operator's cluster secret).

use grpcio::CallOption;
use proto_grpc::tikvpb_grpc::TikvClient;
use util::security::Credentials;

/// A store's client and the call options its calls use.
#[derive(Clone)]
pub(crate) struct StoreClient {
    client: TikvClient,
    opt: CallOption,
}

impl StoreClient {
    /// `client`, whose calls carry the headers of `creds`.
    pub(crate) fn new(client: TikvClient, creds: &Credentials) -> StoreClient {
        StoreClient {
            client,
            opt: creds.call_option(CallOption::default()),
        }
    }

    /// The options of a call.
    pub(crate) fn opt(&self) -> CallOption {
        self.opt.clone()
    }
}

impl std::ops::Deref for StoreClient {
    type Target = TikvClient;

    fn deref(&self) -> &TikvClient {
        &self.client
    }
}
