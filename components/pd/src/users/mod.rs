//! Users, roles and tokens on the PD leader: the one `authpb.AuthState` record (written
//! through the PD group like all metadata, and compiled into an `AuthView` for checks),
//! logins with their rate limits, and the admin checks of PD's own calls.

mod change;
mod limiter;
pub(crate) mod service;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use auth::{
    names, password,
    perm::ROOT,
    token,
    view::{AuthView, By, Caller, Need},
};
use parking_lot::{Mutex, RwLock};
use proto::authpb::{self, ChangeRequest_oneof_change as Change};
use util::security::Proof;

use crate::{config::AuthConfig, storage::Storage, Error, Result};
use limiter::Limiter;

/// A new signing key signs only once it is this old, so that every store has it by
/// then (they fetch the state every second).
const KEY_PUBLISH_DELAY: Duration = Duration::from_secs(3);

/// Auth on the PD leader (one per term, opened with the core).
pub(crate) struct AuthCore {
    cfg: AuthConfig,
    storage: Storage,
    /// The record as replicated; changes are made under this lock, one at a time.
    state: Mutex<authpb::AuthState>,
    view: RwLock<Arc<AuthView>>,
    limiter: Mutex<Limiter>,
    /// Password checks running, bounded by `password-checks-at-once`.
    checks: AtomicUsize,
    /// Names nobody may sign up as: the cluster's certificate names.
    reserved: Vec<String>,
}

impl AuthCore {
    /// Loads the record from `storage`.
    pub(crate) fn open(
        cfg: AuthConfig,
        reserved: Vec<String>,
        storage: Storage,
    ) -> Result<AuthCore> {
        let state = storage.auth_state()?.unwrap_or_default();
        Ok(AuthCore {
            limiter: Mutex::new(Limiter::new(cfg.login_free_failures, cfg.login_max_lockout)),
            view: RwLock::new(Arc::new(AuthView::new(&state))),
            state: Mutex::new(state),
            checks: AtomicUsize::new(0),
            reserved,
            storage,
            cfg,
        })
    }

    /// The compiled state.
    pub(crate) fn view(&self) -> Arc<AuthView> {
        self.view.read().clone()
    }

    /// Who makes a call with `proof`. With auth off, a certificate named root is root
    /// even before the user exists: it is how an operator holding the CA sets auth up.
    pub(crate) fn caller(&self, proof: &Proof) -> Result<Caller> {
        let view = self.view();
        if !view.enabled && proof.token.is_none() && proof.cn.as_deref() == Some(ROOT) {
            return Ok(Caller::User {
                name: ROOT.into(),
                by: By::Certificate,
                perms: auth::perm::Permissions::all(),
            });
        }
        view.identify(
            proof.cluster,
            proof.token.as_deref(),
            proof.cn.as_deref(),
            auth::now_unix_ms(),
        )
        .map_err(|e| Error::AuthFailed(e.to_string()))
    }

    /// Whether `proof` may make an admin call: a process of the cluster always; with auth
    /// on, a user with `admin`; with it off, root's certificate. `open_when_off` lets
    /// anyone through while auth is off (the GC safe point, as before auth existed).
    pub(crate) fn check_admin(&self, proof: &Proof, open_when_off: bool) -> Result<()> {
        if proof.cluster || (open_when_off && !self.view().enabled) {
            return Ok(());
        }
        let caller = self.caller(proof)?;
        if !self.view().enabled && caller.name() != Some(ROOT) {
            return Err(Error::Unauthenticated);
        }
        caller
            .check(&[Need::Admin])
            .map_err(|e| Error::PermissionDenied(e.to_string()))
    }

    /// Runs `f` (a password check or hash) if one of the bounded turns is free; refuses
    /// at once otherwise, so that no thread of PD's pool waits for one.
    fn with_check_turn<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let taken = self
            .checks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cfg.password_checks_at_once).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Error::RateLimited(
                "PD is busy checking passwords; retry in a moment".into(),
            ));
        }
        let out = f();
        self.checks.fetch_sub(1, Ordering::AcqRel);
        Ok(out)
    }

    /// Whether `password` is `name`'s, counting a wrong one against the name and
    /// `addr`; a locked-out name or address is refused unhashed. The user's generation
    /// if it is.
    fn check_password(&self, name: &str, password: &str, addr: &str) -> Result<u64> {
        self.locked_out(name, addr)?;
        let (hash, generation) = {
            let s = self.state.lock();
            change::find_user(&s, name)
                .map(|u| (u.password_hash.clone(), u.generation))
                .unzip()
        };
        let ok = self.with_check_turn(|| password::verify(password, hash.as_deref()))?;
        match (ok, generation) {
            (true, Some(g)) => {
                self.limiter.lock().succeeded(name);
                Ok(g)
            }
            _ => {
                self.limiter.lock().failed(name, addr, Instant::now());
                Err(Error::AuthFailed("wrong user name or password".into()))
            }
        }
    }

    fn hash(&self, password: &str) -> Result<String> {
        self.with_check_turn(|| password::hash(password))?
            .map_err(|e| Error::InvalidValue(e.to_string()))
    }

    fn locked_out(&self, name: &str, addr: &str) -> Result<()> {
        self.limiter
            .lock()
            .check(name, addr, Instant::now())
            .map_err(|wait| {
                Error::RateLimited(format!(
                    "too many failed logins for user {name:?} or from {addr}: retry in {} s",
                    wait.as_secs().max(1)
                ))
            })
    }

    /// A token for `name` if `password` is its password. Wrong passwords count against
    /// the name and the address `addr`; a locked-out login is refused unhashed.
    pub(crate) fn login(&self, name: &str, password: &str, addr: &str) -> Result<(String, u64)> {
        names::check_name("user", name).map_err(|e| Error::InvalidValue(e.to_string()))?;
        names::check_password(password).map_err(|e| Error::InvalidValue(e.to_string()))?;
        if !self.view().enabled {
            return Err(Error::FailedPrecondition(
                "auth is not enabled: there is nothing to log in to (kvctl auth enable)".into(),
            ));
        }
        let generation = self.check_password(name, password, addr)?;
        let (key_id, key) = self.signing_key()?;
        let expires = auth::now_unix_ms() + self.cfg.token_ttl.as_millis() as u64;
        let claims = token::Claims {
            user: name.to_string(),
            generation,
            key_id,
            expires_unix_ms: expires,
        };
        Ok((token::issue(&claims, &key), expires))
    }

    /// Adds `name` with the default role, if signup is allowed and auth is on (so that
    /// nobody claims a name, root above all, before the operator has set auth up). Each
    /// signup counts as a failure for the rate limit of its address, since it costs a
    /// hash.
    pub(crate) fn signup(&self, name: &str, password: &str, addr: &str) -> Result<()> {
        if !self.cfg.allow_signup {
            return Err(Error::FailedPrecondition(
                "signup is not allowed here (auth.allow-signup = false): ask an admin for a user"
                    .into(),
            ));
        }
        if !self.view().enabled {
            return Err(Error::FailedPrecondition(
                "signup opens once auth is enabled (kvctl auth enable)".into(),
            ));
        }
        names::check_name("user", name).map_err(|e| Error::InvalidValue(e.to_string()))?;
        names::check_password(password).map_err(|e| Error::InvalidValue(e.to_string()))?;
        if name == ROOT || self.reserved.iter().any(|r| r == name) {
            return Err(Error::PermissionDenied(format!(
                "the name {name:?} is reserved"
            )));
        }
        self.locked_out(name, addr)?;
        self.limiter.lock().failed(name, addr, Instant::now());
        let hash = self.hash(password)?;
        let roles: Vec<String> = match self.cfg.default_role.as_str() {
            "" => vec![],
            r => vec![r.to_string()],
        };
        self.write(|s| change::add_user(s, &self.cfg, name, hash, roles))
            .map(|_| ())
    }

    /// Applies `change` for the caller with `proof`: admin only, but a user may change
    /// its own password by giving the current one. Passwords are hashed before the
    /// record is locked. Returns the record's new revision.
    pub(crate) fn change(&self, proof: &Proof, change: Change) -> Result<u64> {
        let own_password = match &change {
            Change::change_password(up) => {
                self.view().enabled && self.caller(proof)?.name() == Some(up.get_name())
            }
            _ => false,
        };
        match &change {
            Change::change_password(up)
                if own_password && self.check_admin(proof, false).is_err() =>
            {
                self.check_password(up.get_name(), up.get_current_password(), &proof.peer)?;
            }
            _ => self.check_admin(proof, false)?,
        }
        let hashed = match &change {
            Change::add_user(up) | Change::change_password(up) => {
                names::check_password(up.get_password())
                    .map_err(|e| Error::InvalidValue(e.to_string()))?;
                Some(self.hash(up.get_password())?)
            }
            _ => None,
        };
        self.write(|s| {
            change::apply(s, &self.cfg, change, || {
                hashed.ok_or_else(|| Error::Corrupted("no hash for a password change".into()))
            })
        })
    }

    /// Changes a copy of the record with `f`, replicates it, and only then makes it
    /// the record.
    fn write(&self, f: impl FnOnce(&mut authpb::AuthState) -> Result<()>) -> Result<u64> {
        let mut s = self.state.lock();
        let mut next = s.clone();
        f(&mut next)?;
        next.revision += 1;
        self.rotate_keys(&mut next);
        self.storage.put_auth_state(&next)?;
        *self.view.write() = Arc::new(AuthView::new(&next));
        *s = next;
        Ok(s.revision)
    }

    /// Adds a signing key if there is none or the newest is due for rotation, and drops
    /// keys no live token can be signed with.
    fn rotate_keys(&self, s: &mut authpb::AuthState) {
        let now = auth::now_unix_ms();
        let newest = s.get_keys().iter().map(|k| k.created_unix_ms).max();
        if newest.is_none_or(|t| now.saturating_sub(t) >= self.cfg.key_rotation.as_millis() as u64)
        {
            let mut k = authpb::SigningKey::default();
            k.id = s.get_keys().iter().map(|k| k.id).max().unwrap_or(0) + 1;
            k.key = (0..32).map(|_| rand::random::<u8>()).collect();
            k.created_unix_ms = now;
            s.mut_keys().push(k);
        }
        // A key stops signing once a newer one is published; its tokens live token-ttl.
        let life = (self.cfg.token_ttl + KEY_PUBLISH_DELAY).as_millis() as u64;
        let created: Vec<u64> = s.get_keys().iter().map(|k| k.created_unix_ms).collect();
        s.mut_keys().retain(|k| {
            !created
                .iter()
                .any(|&c| c > k.created_unix_ms && now.saturating_sub(c) > life)
        });
    }

    /// The key to sign with: the newest published one (rotating first if due).
    fn signing_key(&self) -> Result<(u32, Vec<u8>)> {
        let due = {
            let s = self.state.lock();
            let newest = s.get_keys().iter().map(|k| k.created_unix_ms).max();
            newest.is_none_or(|t| {
                auth::now_unix_ms().saturating_sub(t) >= self.cfg.key_rotation.as_millis() as u64
            })
        };
        if due {
            self.write(|_| Ok(()))?;
        }
        let s = self.state.lock();
        let now = auth::now_unix_ms();
        let published = |k: &&&authpb::SigningKey| {
            now.saturating_sub(k.created_unix_ms) >= KEY_PUBLISH_DELAY.as_millis() as u64
        };
        let mut keys: Vec<&authpb::SigningKey> = s.get_keys().iter().collect();
        keys.sort_by_key(|k| k.created_unix_ms);
        let k = keys
            .iter()
            .rev()
            .find(published)
            .or(keys.last())
            .ok_or_else(|| Error::Corrupted("auth state has no signing key".into()))?;
        Ok((k.id, k.key.clone()))
    }

    /// The record without password hashes, if its revision is not `known`.
    pub(crate) fn state_since(&self, known: u64) -> Option<authpb::AuthState> {
        let s = self.state.lock();
        (s.revision != known).then(|| without_hashes(&s))
    }

    /// Whether auth is on, the users (without hashes) and the roles.
    pub(crate) fn list(&self) -> authpb::ListResponse {
        let s = without_hashes(&self.state.lock());
        let mut resp = authpb::ListResponse {
            enabled: s.enabled,
            ..Default::default()
        };
        resp.set_users(s.get_users().to_vec().into());
        resp.set_roles(s.get_roles().to_vec().into());
        resp
    }
}

fn without_hashes(s: &authpb::AuthState) -> authpb::AuthState {
    let mut out = s.clone();
    for u in out.mut_users().iter_mut() {
        u.clear_password_hash();
    }
    out
}
