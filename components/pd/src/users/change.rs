//! One change to the auth state (`authpb.ChangeRequest`), checked and applied to a copy:
//! the caller replaces the state with it only once it is replicated.

use auth::{names, perm::ROOT, view::grant_from_wire};
use proto::authpb::{self, ChangeRequest_oneof_change as Change};

use crate::{config::AuthConfig, Error, Result};

fn invalid(e: auth::Error) -> Error {
    Error::InvalidValue(e.to_string())
}

fn user_mut<'a>(s: &'a mut authpb::AuthState, name: &str) -> Result<&'a mut authpb::User> {
    s.mut_users()
        .iter_mut()
        .find(|u| u.name == name)
        .ok_or_else(|| Error::NotFound(format!("no user {name:?}")))
}

fn role_mut<'a>(s: &'a mut authpb::AuthState, name: &str) -> Result<&'a mut authpb::Role> {
    s.mut_roles()
        .iter_mut()
        .find(|r| r.name == name)
        .ok_or_else(|| Error::NotFound(format!("no role {name:?}")))
}

/// The user named `name`, if any.
pub(crate) fn find_user<'a>(s: &'a authpb::AuthState, name: &str) -> Option<&'a authpb::User> {
    s.get_users().iter().find(|u| u.name == name)
}

/// Adds user `name` with the hash `hash` and `roles`.
pub(crate) fn add_user(
    s: &mut authpb::AuthState,
    cfg: &AuthConfig,
    name: &str,
    hash: String,
    roles: Vec<String>,
) -> Result<()> {
    names::check_name("user", name).map_err(invalid)?;
    if find_user(s, name).is_some() {
        return Err(Error::AlreadyExists(format!("user {name:?} exists")));
    }
    if s.get_users().len() >= cfg.max_users {
        return Err(Error::InvalidValue(format!(
            "there are already auth.max-users ({}) users",
            cfg.max_users
        )));
    }
    let mut u = authpb::User::default();
    u.set_name(name.to_string());
    u.set_password_hash(hash);
    u.generation = next_generation(s);
    u.set_roles(roles.into());
    s.mut_users().push(u);
    Ok(())
}

fn next_generation(s: &mut authpb::AuthState) -> u64 {
    s.next_generation += 1;
    s.next_generation
}

/// Applies `change` to `s`; `hash` gives the hash of the password it sets, if any
/// (made beforehand, outside any lock).
pub(crate) fn apply(
    s: &mut authpb::AuthState,
    cfg: &AuthConfig,
    change: Change,
    hash: impl FnOnce() -> Result<String>,
) -> Result<()> {
    match change {
        Change::enable(on) => {
            if on && find_user(s, ROOT).is_none() {
                return Err(Error::FailedPrecondition(
                    "add the user root first (kvctl user add root): with auth on, only root may do everything".into(),
                ));
            }
            s.enabled = on;
        }
        Change::add_user(up) => {
            names::check_password(up.get_password()).map_err(invalid)?;
            add_user(s, cfg, up.get_name(), hash()?, vec![])?;
        }
        Change::delete_user(name) => {
            if name == ROOT && s.enabled {
                return Err(Error::FailedPrecondition(
                    "root cannot be deleted while auth is enabled".into(),
                ));
            }
            user_mut(s, &name)?;
            s.mut_users().retain(|u| u.name != name);
        }
        Change::change_password(up) => {
            names::check_password(up.get_password()).map_err(invalid)?;
            let h = hash()?;
            let generation = next_generation(s);
            let u = user_mut(s, up.get_name())?;
            u.set_password_hash(h);
            u.generation = generation;
        }
        Change::grant_role(ur) => {
            role_mut(s, ur.get_role())?;
            let max = cfg.max_roles_per_user;
            let u = user_mut(s, ur.get_user())?;
            if !u.get_roles().iter().any(|r| r == ur.get_role()) {
                if u.get_roles().len() >= max {
                    return Err(Error::InvalidValue(format!(
                        "user {:?} already has auth.max-roles-per-user ({max}) roles",
                        u.name
                    )));
                }
                u.mut_roles().push(ur.get_role().to_string());
            }
        }
        Change::revoke_role(ur) => {
            let u = user_mut(s, ur.get_user())?;
            if !u.get_roles().iter().any(|r| r == ur.get_role()) {
                return Err(Error::NotFound(format!(
                    "user {:?} does not have role {:?}",
                    ur.get_user(),
                    ur.get_role()
                )));
            }
            u.mut_roles().retain(|r| r != ur.get_role());
        }
        Change::add_role(name) => {
            names::check_name("role", &name).map_err(invalid)?;
            if s.get_roles().iter().any(|r| r.name == name) {
                return Err(Error::AlreadyExists(format!("role {name:?} exists")));
            }
            if s.get_roles().len() >= cfg.max_roles {
                return Err(Error::InvalidValue(format!(
                    "there are already auth.max-roles ({}) roles",
                    cfg.max_roles
                )));
            }
            let mut r = authpb::Role::default();
            r.set_name(name);
            s.mut_roles().push(r);
        }
        Change::delete_role(name) => {
            role_mut(s, &name)?;
            s.mut_roles().retain(|r| r.name != name);
            for u in s.mut_users().iter_mut() {
                u.mut_roles().retain(|r| *r != name);
            }
        }
        Change::grant_permission(rg) => {
            let max = cfg.max_grants_per_role;
            let wanted = checked_grant(&rg)?;
            let r = role_mut(s, rg.get_role())?;
            match wanted {
                None => r.admin = true,
                Some(g) if !r.get_grants().contains(&g) => {
                    if r.get_grants().len() >= max {
                        return Err(Error::InvalidValue(format!(
                            "role {:?} already has auth.max-grants-per-role ({max}) grants",
                            r.name
                        )));
                    }
                    r.mut_grants().push(g);
                }
                Some(_) => {}
            }
        }
        Change::revoke_permission(rg) => {
            let wanted = checked_grant(&rg)?;
            let r = role_mut(s, rg.get_role())?;
            let had = match wanted {
                None => std::mem::replace(&mut r.admin, false),
                Some(g) => {
                    let before = r.get_grants().len();
                    r.mut_grants().retain(|x| *x != g);
                    r.get_grants().len() != before
                }
            };
            if !had {
                return Err(Error::NotFound(format!(
                    "role {:?} has no such permission",
                    rg.get_role()
                )));
            }
        }
    }
    Ok(())
}

/// The grant a permission change names (`None`: admin), checked.
fn checked_grant(rg: &authpb::RoleGrant) -> Result<Option<authpb::Grant>> {
    match (rg.admin, rg.has_grant()) {
        (true, false) => Ok(None),
        (false, true) => {
            grant_from_wire(rg.get_grant()).map_err(invalid)?;
            if rg.get_grant().get_start().len() > 4096 || rg.get_grant().get_end().len() > 4096 {
                return Err(Error::InvalidValue(
                    "a permission's keys are at most 4096 bytes".into(),
                ));
            }
            Ok(Some(rg.get_grant().clone()))
        }
        _ => Err(Error::InvalidValue(
            "a permission is either admin or a grant on keys, not both or neither".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> Result<String> {
        Ok("h".into())
    }

    fn apply_ok(s: &mut authpb::AuthState, c: Change) {
        apply(s, &AuthConfig::default(), c, hash).unwrap()
    }

    fn up(name: &str, password: &str) -> authpb::UserPassword {
        let mut u = authpb::UserPassword::default();
        u.set_name(name.into());
        u.set_password(password.into());
        u
    }

    #[test]
    fn enabling_needs_root_and_root_stays() {
        let mut s = authpb::AuthState::default();
        let err = apply(&mut s, &AuthConfig::default(), Change::enable(true), hash).unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
        apply_ok(&mut s, Change::add_user(up("root", "pw")));
        apply_ok(&mut s, Change::enable(true));
        let err = apply(
            &mut s,
            &AuthConfig::default(),
            Change::delete_user("root".into()),
            hash,
        );
        assert!(err.is_err());
    }

    #[test]
    fn passwords_and_re_creation_move_the_generation_on() {
        let mut s = authpb::AuthState::default();
        apply_ok(&mut s, Change::add_user(up("alice", "pw")));
        let g1 = find_user(&s, "alice").unwrap().generation;
        apply_ok(&mut s, Change::change_password(up("alice", "pw2")));
        let g2 = find_user(&s, "alice").unwrap().generation;
        apply_ok(&mut s, Change::delete_user("alice".into()));
        apply_ok(&mut s, Change::add_user(up("alice", "pw")));
        let g3 = find_user(&s, "alice").unwrap().generation;
        assert!(g1 < g2 && g2 < g3);
        assert_eq!(find_user(&s, "alice").unwrap().password_hash, "h");
    }

    #[test]
    fn bad_names_ranges_and_unknowns_are_refused() {
        let mut s = authpb::AuthState::default();
        let cfg = AuthConfig::default();
        let bad = |s: &mut authpb::AuthState, c| apply(s, &cfg, c, hash).unwrap_err().to_string();
        assert!(bad(&mut s, Change::add_user(up("a b", "pw"))).contains("user name"));
        assert!(bad(&mut s, Change::add_user(up("bob", "p\nw"))).contains("control"));
        assert!(bad(&mut s, Change::add_user(up("bob", &"p".repeat(300)))).contains("256"));
        apply_ok(&mut s, Change::add_role("r".into()));
        let mut rg = authpb::RoleGrant::default();
        rg.set_role("r".into());
        rg.mut_grant().set_start(b"z".to_vec());
        rg.mut_grant().set_end(b"a".to_vec());
        assert!(bad(&mut s, Change::grant_permission(rg.clone())).contains("before its end"));
        rg.admin = true;
        assert!(bad(&mut s, Change::grant_permission(rg)).contains("not both"));
        let mut ur = authpb::UserRole::default();
        ur.set_user("nobody".into());
        ur.set_role("r".into());
        assert!(bad(&mut s, Change::grant_role(ur)).contains("no user"));
    }
}
