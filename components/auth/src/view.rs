//! What PD and the stores check callers against: the replicated `authpb.AuthState`
//! compiled into each user's permissions and the signing keys, and the one rule that
//! turns a call's proofs (a token, a certificate, the cluster's own proof) into a caller.

use std::collections::HashMap;

use proto::authpb;

use crate::{
    perm::{Access, Grant, Kind, Permissions, ROOT},
    token, Error, Result,
};

/// One user as checks need it.
#[derive(Clone, Debug)]
pub struct UserView {
    /// Tokens of another generation are dead.
    pub generation: u64,
    /// The union of the user's roles.
    pub perms: Permissions,
    /// The roles, for WhoAmI.
    pub roles: Vec<String>,
}

/// The compiled auth state.
#[derive(Clone, Default)]
pub struct AuthView {
    /// Whether calls are checked at all.
    pub enabled: bool,
    /// The state's revision.
    pub revision: u64,
    users: HashMap<String, UserView>,
    keys: HashMap<u32, Vec<u8>>,
    /// The highest user generation and signing key id the state has given out: a token
    /// past either was issued after this state.
    newest_generation: u64,
    newest_key: u32,
}

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// A token from a login.
    Token,
    /// A TLS client certificate whose common name names the user.
    Certificate,
}

/// Who makes a call.
#[derive(Clone, Debug)]
pub enum Caller {
    /// A process of this cluster (the cluster secret, or a cluster certificate): all.
    Cluster,
    /// A user.
    User {
        /// The user's name.
        name: String,
        /// How it proved it.
        by: By,
        /// What it may do.
        perms: Permissions,
    },
    /// Nobody in particular: with auth enabled, it may do nothing.
    Anonymous,
}

/// What a call needs.
#[derive(Clone, Debug)]
pub enum Need<'a> {
    /// Access to one key.
    Key(Access, &'a [u8]),
    /// Access to every key of `[start, end)` (an empty end: no end).
    Range(Access, &'a [u8], &'a [u8]),
    /// The admin permission.
    Admin,
}

impl std::fmt::Debug for AuthView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the signing keys.
        f.debug_struct("AuthView")
            .field("enabled", &self.enabled)
            .field("revision", &self.revision)
            .field("users", &self.users.len())
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// The wire form of `g`.
pub fn grant_to_wire(g: &Grant) -> authpb::Grant {
    let mut w = authpb::Grant::default();
    w.set_kind(match g.kind {
        Kind::Read => authpb::GrantKind::Read,
        Kind::Write => authpb::GrantKind::Write,
        Kind::ReadWrite => authpb::GrantKind::ReadWrite,
    });
    w.set_start(g.start.clone());
    w.set_end(g.end.clone());
    w
}

/// The grant a wire grant stands for; refused if its range is empty.
pub fn grant_from_wire(g: &authpb::Grant) -> Result<Grant> {
    let kind = match g.get_kind() {
        authpb::GrantKind::Read => Kind::Read,
        authpb::GrantKind::Write => Kind::Write,
        authpb::GrantKind::ReadWrite => Kind::ReadWrite,
    };
    Grant::range(kind, g.get_start(), g.get_end())
}

/// The permissions `roles` give (every known role among them; unknown ones give none).
fn permissions_of(roles: &[String], all_roles: &HashMap<&str, &authpb::Role>) -> Permissions {
    let mut admin = false;
    let mut grants = vec![];
    for r in roles.iter().filter_map(|r| all_roles.get(r.as_str())) {
        admin |= r.admin;
        grants.extend(
            r.get_grants()
                .iter()
                .filter_map(|g| grant_from_wire(g).ok()),
        );
    }
    Permissions::new(admin, grants)
}

/// Shows bytes readably in an error: UTF-8 as is, else escaped, at most 64 bytes.
fn show(key: &[u8]) -> String {
    let cut = &key[..key.len().min(64)];
    let more = if key.len() > 64 { "…" } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(cut))
}

impl AuthView {
    /// Compiles `state`.
    pub fn new(state: &authpb::AuthState) -> AuthView {
        let roles: HashMap<&str, &authpb::Role> = state
            .get_roles()
            .iter()
            .map(|r| (r.get_name(), r))
            .collect();
        let users = state
            .get_users()
            .iter()
            .map(|u| {
                let perms = match u.name == ROOT {
                    true => Permissions::all(),
                    false => permissions_of(u.get_roles(), &roles),
                };
                let view = UserView {
                    generation: u.generation,
                    perms,
                    roles: u.get_roles().to_vec(),
                };
                (u.name.clone(), view)
            })
            .collect();
        let keys: HashMap<u32, Vec<u8>> = state
            .get_keys()
            .iter()
            .map(|k| (k.id, k.key.clone()))
            .collect();
        AuthView {
            enabled: state.enabled,
            revision: state.revision,
            users,
            newest_key: keys.keys().copied().max().unwrap_or(0),
            keys,
            newest_generation: state.next_generation,
        }
    }

    /// Whether any user exists (auth is set up, or being set up).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&UserView> {
        self.users.get(name)
    }

    /// Who a call comes from: `cluster` if it carries the cluster's own proof; else the
    /// user its `token` names (which must verify, and match the user's generation at
    /// `now_unix_ms`); else the user its certificate's common name `cn` names; else
    /// anonymous. A token that fails, or a certificate naming no user, is an error.
    pub fn identify(
        &self,
        cluster: bool,
        token: Option<&str>,
        cn: Option<&str>,
        now_unix_ms: u64,
    ) -> Result<Caller> {
        if cluster {
            return Ok(Caller::Cluster);
        }
        if let Some(t) = token {
            let claims = match token::verify(t, |id| self.keys.get(&id).cloned(), now_unix_ms) {
                Ok(c) => c,
                // Signed by a key made after this state: the checker must catch up.
                Err(_)
                    if token::unverified_claims(t).is_some_and(|c| {
                        !self.keys.contains_key(&c.key_id) && c.key_id > self.newest_key
                    }) =>
                {
                    return Err(Error::NotYet(
                        "the token was signed by a key newer than this server knows; retry".into(),
                    ))
                }
                Err(e) => return Err(e),
            };
            let Some(user) = self.users.get(&claims.user) else {
                // A genuine token of a user added after this state.
                if claims.generation > self.newest_generation {
                    return Err(Error::NotYet(
                        "the token's user is newer than this server knows; retry".into(),
                    ));
                }
                return Err(Error::BadToken(format!(
                    "token of user {:?}, which no longer exists",
                    claims.user
                )));
            };
            // A genuine token of a password changed (or user re-created) after this state.
            if user.generation < claims.generation && claims.generation > self.newest_generation {
                return Err(Error::NotYet(
                    "the token is newer than the users this server knows; retry".into(),
                ));
            }
            if user.generation != claims.generation {
                return Err(Error::BadToken(format!(
                    "token of user {:?} was revoked (password changed or user re-created): log in again",
                    claims.user
                )));
            }
            return Ok(Caller::User {
                name: claims.user,
                by: By::Token,
                perms: user.perms.clone(),
            });
        }
        if let Some(cn) = cn {
            let user = self.users.get(cn).ok_or_else(|| {
                Error::BadToken(format!(
                    "the client certificate names user {:?}, which does not exist",
                    cn
                ))
            })?;
            return Ok(Caller::User {
                name: cn.to_string(),
                by: By::Certificate,
                perms: user.perms.clone(),
            });
        }
        Ok(Caller::Anonymous)
    }

    /// The signing key `id`.
    pub fn key(&self, id: u32) -> Option<&[u8]> {
        self.keys.get(&id).map(Vec::as_slice)
    }
}

impl Caller {
    /// Whether the caller has everything `needs` asks for; the error names the first
    /// need that fails.
    pub fn check(&self, needs: &[Need<'_>]) -> std::result::Result<(), Denied> {
        let (name, perms) = match self {
            Caller::Cluster => return Ok(()),
            Caller::Anonymous => return Err(Denied::Unauthenticated),
            Caller::User { name, perms, .. } => (name, perms),
        };
        for need in needs {
            let (ok, what) = match *need {
                Need::Key(a, k) => (
                    perms.covers_key(a, k),
                    format!("{} key {}", verb(a), show(k)),
                ),
                Need::Range(a, s, e) => (
                    perms.covers(a, s, e),
                    format!(
                        "{} keys from {} to {}",
                        verb(a),
                        show(s),
                        if e.is_empty() {
                            "the end".into()
                        } else {
                            show(e)
                        }
                    ),
                ),
                Need::Admin => (perms.admin, "use admin calls".to_string()),
            };
            if !ok {
                return Err(Denied::Forbidden(format!(
                    "permission denied: user {name:?} may not {what}"
                )));
            }
        }
        Ok(())
    }

    /// The user's name, if a user.
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::User { name, .. } => Some(name),
            _ => None,
        }
    }
}

fn verb(a: Access) -> &'static str {
    match a {
        Access::Read => "read",
        Access::Write => "write",
    }
}

/// Why a call is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No proof of identity came with it.
    #[error("authentication is required: log in (kvctl login, or a token from Auth.Login) or present a client certificate naming a user")]
    Unauthenticated,
    /// The caller's proof failed.
    #[error("{0}")]
    BadProof(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
}

impl From<Error> for Denied {
    fn from(e: Error) -> Denied {
        Denied::BadProof(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{issue, Claims};

    fn state() -> authpb::AuthState {
        let mut s = authpb::AuthState {
            enabled: true,
            next_generation: 2,
            ..Default::default()
        };
        let mut role = authpb::Role::default();
        role.set_name("a-reader".into());
        let mut g = authpb::Grant::default();
        g.set_kind(authpb::GrantKind::Read);
        g.set_start(b"a/".to_vec());
        g.set_end(b"a0".to_vec());
        role.mut_grants().push(g);
        s.mut_roles().push(role);
        for (name, generation, roles) in [("root", 1, vec![]), ("alice", 2, vec!["a-reader"])] {
            let mut u = authpb::User::default();
            u.set_name(name.into());
            u.generation = generation;
            u.set_roles(roles.into_iter().map(String::from).collect());
            s.mut_users().push(u);
        }
        s.mut_keys().push(authpb::SigningKey {
            id: 1,
            key: vec![7; 32],
            ..Default::default()
        });
        s
    }

    fn token(user: &str, generation: u64) -> String {
        let claims = Claims {
            user: user.into(),
            generation,
            key_id: 1,
            expires_unix_ms: 10_000,
        };
        issue(&claims, &[7; 32])
    }

    #[test]
    fn callers_get_their_roles_and_nothing_else() {
        let v = AuthView::new(&state());
        let alice = v
            .identify(false, Some(&token("alice", 2)), None, 1_000)
            .unwrap();
        assert_eq!(alice.name(), Some("alice"));
        assert!(alice.check(&[Need::Key(Access::Read, b"a/x")]).is_ok());
        let err = alice
            .check(&[Need::Key(Access::Write, b"a/x")])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "permission denied: user \"alice\" may not write key \"a/x\""
        );
        assert!(alice
            .check(&[Need::Range(Access::Read, b"a/", b"c/")])
            .is_err());
        assert!(alice.check(&[Need::Admin]).is_err());
        let root = v.identify(false, None, Some("root"), 1_000).unwrap();
        assert!(root
            .check(&[Need::Admin, Need::Range(Access::Write, b"", b"")])
            .is_ok());
        assert!(v
            .identify(true, None, None, 0)
            .unwrap()
            .check(&[Need::Admin])
            .is_ok());
        let anon = v.identify(false, None, None, 0).unwrap();
        assert_eq!(anon.check(&[]), Err(Denied::Unauthenticated));
    }

    #[test]
    fn dead_tokens_and_unknown_names_are_refused() {
        let v = AuthView::new(&state());
        let err = |t: Option<&str>, cn: Option<&str>| {
            v.identify(false, t, cn, 1_000).unwrap_err().to_string()
        };
        assert!(err(Some(&token("alice", 1)), None).contains("revoked"));
        assert!(err(Some(&token("bob", 1)), None).contains("no longer exists"));
        assert!(err(None, Some("bob")).contains("does not exist"));
        assert!(
            v.identify(false, Some(&token("alice", 2)), None, 10_000)
                .is_err(),
            "expired"
        );
        // A token from after this state (a user added since) is not refused: retried.
        let newer = v.identify(false, Some(&token("dave", 3)), None, 1_000);
        assert!(matches!(newer, Err(Error::NotYet(_))), "{newer:?}");
        let later_key = issue(
            &Claims {
                user: "alice".into(),
                generation: 2,
                key_id: 2,
                expires_unix_ms: 10_000,
            },
            &[8; 32],
        );
        let newer = v.identify(false, Some(&later_key), None, 1_000);
        assert!(matches!(newer, Err(Error::NotYet(_))), "{newer:?}");
        // A token wins over a certificate: a bad one is refused even with a good one.
        assert!(err(Some("x.y"), Some("root")).contains("malformed"));
    }
}
