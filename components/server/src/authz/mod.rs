//! Checking callers: the store's copy of PD's users, roles and signing keys (fetched
//! every `server.auth-refresh-interval`), and the check every request passes before it
//! reads or writes anything (`needs.rs` says what each request needs).

mod needs;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use auth::view::AuthView;
use parking_lot::RwLock;
use pd_client::PdClient;
use slog::{info, warn, Logger};
use util::security::Proof;

pub use needs::Guarded;

use crate::{Error, Result};

/// The least time between two fetches of the auth state.
const CATCH_UP_GAP: Duration = Duration::from_millis(100);

/// The auth state as this store last fetched it.
struct Loaded {
    view: Arc<AuthView>,
    at: Instant,
}

/// The store's copy of the auth state, and the check against it.
pub struct AuthGate {
    loaded: RwLock<Option<Loaded>>,
    max_staleness: Duration,
    /// Wakes the refresher early: a caller showed a token newer than the state.
    catch_up: Arc<tokio::sync::Notify>,
}

impl AuthGate {
    /// A gate that knows nothing yet: it refuses every caller but the cluster's own
    /// processes until the first fetch.
    pub fn new(max_staleness: Duration) -> Arc<AuthGate> {
        Arc::new(AuthGate {
            loaded: RwLock::new(None),
            max_staleness,
            catch_up: Arc::default(),
        })
    }

    /// Whether a caller with `proof` may make a request that needs what `req` needs.
    pub fn check<R: Guarded + ?Sized>(&self, proof: &Proof, req: &R) -> Result<()> {
        if proof.cluster {
            return Ok(());
        }
        let view = match &*self.loaded.read() {
            None => {
                return Err(Error::AuthUnavailable(
                    "this store has not loaded users and roles from PD yet; retry".into(),
                ))
            }
            // Stale: with users set up, auth may have been turned on meanwhile, so fail
            // closed; a cluster that never had users stays available without PD.
            Some(l) if l.at.elapsed() > self.max_staleness && l.view.has_users() => {
                return Err(Error::AuthUnavailable(format!(
                    "this store has not heard from PD about users and roles for {} s \
                     (server.auth-max-staleness); retry",
                    l.at.elapsed().as_secs()
                )))
            }
            Some(l) if !l.view.enabled => return Ok(()),
            Some(l) => l.view.clone(),
        };
        let caller = match view.identify(
            false,
            proof.token.as_deref(),
            proof.cn.as_deref(),
            auth::now_unix_ms(),
        ) {
            Ok(c) => c,
            Err(auth::Error::NotYet(why)) => {
                self.catch_up.notify_one();
                return Err(Error::AuthUnavailable(why));
            }
            Err(e) => return Err(auth::view::Denied::from(e).into()),
        };
        Ok(caller.check(&req.needs())?)
    }

    /// Asks PD for changes (the whole state only when its revision moved).
    async fn refresh(&self, pd: &PdClient) -> Result<bool> {
        let known = self.loaded.read().as_ref().map_or(0, |l| l.view.revision);
        let fresh = match pd.auth_state(known).await {
            Ok(f) => f,
            // A PD without the auth service (an older version) has no users: auth off.
            Err(pd_client::Error::Auth {
                code: grpcio::RpcStatusCode::UNIMPLEMENTED,
                ..
            }) => Some(Default::default()),
            Err(e) => return Err(e.into()),
        };
        let mut loaded = self.loaded.write();
        let changed = fresh.is_some();
        let view = match (fresh, loaded.take()) {
            (Some(s), _) => Arc::new(AuthView::new(&s)),
            (None, Some(l)) => l.view,
            // Revision 0 unchanged: no auth state was ever written.
            (None, None) => Arc::new(AuthView::default()),
        };
        *loaded = Some(Loaded {
            view,
            at: Instant::now(),
        });
        Ok(changed)
    }

    /// Fetches the state once now (so that a store starts serving knowing it), then
    /// every `interval` until the returned task is dropped or the runtime ends.
    pub async fn start(
        self: &Arc<Self>,
        pd: Arc<PdClient>,
        interval: Duration,
        rt: &tokio::runtime::Handle,
        logger: Logger,
    ) {
        if let Err(e) = self.refresh(&pd).await {
            warn!(logger, "cannot load users and roles from PD yet"; "err" => %e);
        }
        let gate = Arc::downgrade(self);
        let catch_up = self.catch_up.clone();
        rt.spawn(async move {
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = catch_up.notified() => {}
                }
                let Some(gate) = gate.upgrade() else {
                    return;
                };
                match gate.refresh(&pd).await {
                    Ok(changed) => {
                        if changed || failing {
                            info!(logger, "auth state loaded"; "revision" => gate.revision());
                        }
                        failing = false;
                    }
                    Err(e) if !failing => {
                        warn!(logger, "cannot refresh users and roles from PD"; "err" => %e);
                        failing = true;
                    }
                    Err(_) => {}
                }
                drop(gate);
                // At most ten early refreshes a second, whatever callers show.
                tokio::time::sleep(CATCH_UP_GAP).await;
            }
        });
    }

    fn revision(&self) -> u64 {
        self.loaded.read().as_ref().map_or(0, |l| l.view.revision)
    }
}
