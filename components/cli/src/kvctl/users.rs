//! Users and roles from kvctl: `login`, `logout`, `whoami`, `signup`, `auth`, `user` and
//! `role`, all calls of PD's auth service. Passwords come from the terminal (not echoed)
//! or, with `--password-stdin`, from the first line of standard input; tokens from a
//! login are kept in the token file (0600) until they expire.

use std::{
    io::BufRead,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use clap::{Args, Subcommand, ValueEnum};
use pd_client::PdClient;
use proto::authpb::{self, ChangeRequest_oneof_change as Change};
use proto_grpc::authpb_grpc::AuthClient;
use serde_json::json;

use client::{Client, Error, Result};

use super::Printer;

/// Where passwords and the token file come from (set once by the binary from its flags).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Read passwords from standard input, not the terminal.
    pub password_stdin: bool,
    /// Where `login` keeps its token.
    pub token_file: Option<PathBuf>,
}

static OPTIONS: OnceLock<Options> = OnceLock::new();

/// Sets where passwords and the token file come from.
pub fn configure(o: Options) {
    let _ = OPTIONS.set(o);
}

fn options() -> Options {
    OPTIONS.get().cloned().unwrap_or_default()
}

/// The token file: the one configured, else `$HOME/.kvctl_token`.
pub fn token_file() -> Option<PathBuf> {
    options()
        .token_file
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kvctl_token")))
}

/// The token saved in `path`, if there is one that has not expired.
pub fn saved_token(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let token = lines.next()?.trim().to_string();
    let expires: u64 = lines.next()?.trim().parse().ok()?;
    (expires > auth::now_unix_ms() && !token.is_empty()).then_some(token)
}

fn save_token(path: &Path, token: &str, expires: u64) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let io =
        |e: std::io::Error| Error::InvalidArgument(format!("token file {}: {e}", path.display()));
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    std::io::Write::write_all(&mut f, format!("{token}\n{expires}\n").as_bytes()).map_err(io)
}

/// A password: the first line of standard input with `--password-stdin`, else asked on
/// the terminal without echo.
pub fn read_password(prompt: &str) -> Result<String> {
    let password = if options().password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::InvalidArgument(format!("reading the password: {e}")))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        rpassword::prompt_password(prompt).map_err(|e| {
            Error::InvalidArgument(format!(
                "no terminal to ask for the password ({e}): use --password-stdin"
            ))
        })?
    };
    auth::names::check_password(&password).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(password)
}

/// Logs `name` in with `password`: the token and when it expires.
pub async fn login(pd: &PdClient, name: &str, password: &str) -> Result<(String, u64)> {
    let mut req = authpb::LoginRequest::default();
    req.set_name(name.to_string());
    req.set_password(password.to_string());
    let resp = pd.auth_call(&req, AuthClient::login_async_opt).await?;
    Ok((resp.token, resp.expires_unix_ms))
}

/// Adds `name` for itself, if PD allows signup.
pub async fn signup(pd: &PdClient, name: &str, password: &str) -> Result<()> {
    let mut req = authpb::SignupRequest::default();
    req.set_name(name.to_string());
    req.set_password(password.to_string());
    pd.auth_call(&req, AuthClient::signup_async_opt).await?;
    Ok(())
}

/// Who the client is, as PD sees it.
pub async fn whoami(pd: &PdClient, p: &mut Printer<'_>) -> Result<i32> {
    let r = pd
        .auth_call(
            &authpb::WhoAmIRequest::default(),
            AuthClient::who_am_i_async_opt,
        )
        .await?;
    let name = match r.get_by() {
        "" => "anonymous".to_string(),
        "cluster" => "a process of the cluster (cluster secret or certificate)".to_string(),
        by => format!("{} (by {by})", r.get_name()),
    };
    if p.json {
        p.line(
            json!({"enabled": r.enabled, "user": r.get_name(), "by": r.get_by(),
                      "admin": r.admin, "roles": r.get_roles()}),
        );
    } else {
        p.line(format!("user\t{name}"));
        p.line(format!(
            "auth\t{}",
            if r.enabled { "enabled" } else { "disabled" }
        ));
        p.line(format!("admin\t{}", r.admin));
        p.line(format!("roles\t{}", r.get_roles().join(",")));
    }
    Ok(0)
}

async fn change(pd: &PdClient, c: Change, p: &mut Printer<'_>) -> Result<i32> {
    let req = authpb::ChangeRequest {
        change: Some(c),
        ..Default::default()
    };
    pd.auth_call(&req, AuthClient::change_async_opt).await?;
    p.ok();
    Ok(0)
}

/// Turning auth on and off.
#[derive(Clone, Debug, Subcommand)]
pub enum AuthCommand {
    /// Check every request against users and roles (refused until a root user exists).
    Enable,
    /// Stop checking.
    Disable,
    /// Whether auth is on, and who you are.
    Status,
}

/// Users.
#[derive(Clone, Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (asks for its password).
    Add {
        /// The user's name.
        name: String,
    },
    /// Remove a user: its tokens stop working on every store within seconds.
    Delete {
        /// The user's name.
        name: String,
    },
    /// Every user and its roles.
    List,
    /// Change a user's password (asks for it): its older tokens stop working.
    Passwd {
        /// The user's name.
        name: String,
        /// Changing your own password as a user who is not admin: asks for the current
        /// password first (with --password-stdin, the first line; the new one second).
        #[arg(long)]
        current: bool,
    },
    /// Give a user a role.
    GrantRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// Take a role from a user.
    RevokeRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
}

/// Roles.
#[derive(Clone, Debug, Subcommand)]
pub enum RoleCommand {
    /// Add a role (with no permission yet).
    Add {
        /// The role's name.
        name: String,
    },
    /// Remove a role (and take it from every user).
    Delete {
        /// The role's name.
        name: String,
    },
    /// Every role and its permissions.
    List,
    /// Give a role a permission: admin, or read, write or readwrite on --key, --prefix
    /// or --range START END.
    Grant(PermissionArgs),
    /// Take a permission from a role (as it was granted).
    Revoke(PermissionArgs),
}

/// A permission, as `role grant` and `role revoke` take it.
#[derive(Clone, Debug, Args)]
pub struct PermissionArgs {
    /// The role.
    pub role: String,
    /// What it allows.
    pub permission: Permission,
    /// One key.
    #[arg(long, conflicts_with_all = ["prefix", "range"])]
    pub key: Option<String>,
    /// Every key with this prefix ("" for every key).
    #[arg(long, conflicts_with = "range")]
    pub prefix: Option<String>,
    /// The keys in [START, END) ("" as END: to the end of the key space).
    #[arg(long, num_args = 2, value_names = ["START", "END"])]
    pub range: Option<Vec<String>>,
}

/// What a permission allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Permission {
    /// Read keys.
    Read,
    /// Write keys.
    Write,
    /// Both.
    Readwrite,
    /// Splits, moves, store deletion, the GC safe point, users and roles.
    Admin,
}

impl PermissionArgs {
    fn wire(&self) -> Result<authpb::RoleGrant> {
        let bad = |why: &str| Err(Error::InvalidArgument(why.into()));
        let mut rg = authpb::RoleGrant::default();
        rg.set_role(self.role.clone());
        let kind = match self.permission {
            Permission::Admin => {
                if self.key.is_some() || self.prefix.is_some() || self.range.is_some() {
                    return bad("admin is not on keys: give no --key, --prefix or --range");
                }
                rg.admin = true;
                return Ok(rg);
            }
            Permission::Read => auth::perm::Kind::Read,
            Permission::Write => auth::perm::Kind::Write,
            Permission::Readwrite => auth::perm::Kind::ReadWrite,
        };
        let grant = match (&self.key, &self.prefix, &self.range) {
            (Some(k), None, None) => auth::perm::Grant::key(kind, k.as_bytes()),
            (None, Some(pfx), None) => Ok(auth::perm::Grant::prefix(kind, pfx.as_bytes())),
            (None, None, Some(r)) => {
                auth::perm::Grant::range(kind, r[0].as_bytes(), r[1].as_bytes())
            }
            _ => return bad("give one of --key KEY, --prefix PREFIX or --range START END"),
        }
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        rg.set_grant(auth::view::grant_to_wire(&grant));
        Ok(rg)
    }
}

fn user_password(name: &str, prompt: &str) -> Result<authpb::UserPassword> {
    auth::names::check_name("user", name).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let mut up = authpb::UserPassword::default();
    up.set_name(name.to_string());
    up.set_password(read_password(prompt)?);
    Ok(up)
}

fn user_role(user: &str, role: &str) -> authpb::UserRole {
    let mut ur = authpb::UserRole::default();
    ur.set_user(user.to_string());
    ur.set_role(role.to_string());
    ur
}

async fn list(pd: &PdClient) -> Result<authpb::ListResponse> {
    Ok(pd
        .auth_call(&authpb::ListRequest::default(), AuthClient::list_async_opt)
        .await?)
}

fn show_grant(g: &authpb::Grant) -> String {
    let end = match g.get_end() {
        [] => "<end>".to_string(),
        e => String::from_utf8_lossy(e).into_owned(),
    };
    format!(
        "{:?} [{}, {end})",
        g.get_kind(),
        String::from_utf8_lossy(g.get_start())
    )
}

/// `kvctl auth ...`.
pub async fn auth_command(client: &Client, cmd: &AuthCommand, p: &mut Printer<'_>) -> Result<i32> {
    let pd = client.pd();
    match cmd {
        AuthCommand::Enable => change(pd, Change::enable(true), p).await,
        AuthCommand::Disable => change(pd, Change::enable(false), p).await,
        AuthCommand::Status => whoami(pd, p).await,
    }
}

/// `kvctl user ...`.
pub async fn user_command(client: &Client, cmd: &UserCommand, p: &mut Printer<'_>) -> Result<i32> {
    let pd = client.pd();
    let c = match cmd {
        UserCommand::Add { name } => Change::add_user(user_password(name, "password: ")?),
        UserCommand::Delete { name } => Change::delete_user(name.clone()),
        UserCommand::Passwd { name, current } => {
            let old = match current {
                true => Some(read_password("current password: ")?),
                false => None,
            };
            let mut up = user_password(name, "new password: ")?;
            up.set_current_password(old.unwrap_or_default());
            Change::change_password(up)
        }
        UserCommand::GrantRole { user, role } => Change::grant_role(user_role(user, role)),
        UserCommand::RevokeRole { user, role } => Change::revoke_role(user_role(user, role)),
        UserCommand::List => {
            let l = list(pd).await?;
            for u in l.get_users() {
                match p.json {
                    true => p.line(json!({"user": u.get_name(), "roles": u.get_roles()})),
                    false => p.line(format!("{}\t{}", u.get_name(), u.get_roles().join(","))),
                }
            }
            return Ok(0);
        }
    };
    change(pd, c, p).await
}

/// `kvctl role ...`.
pub async fn role_command(client: &Client, cmd: &RoleCommand, p: &mut Printer<'_>) -> Result<i32> {
    let pd = client.pd();
    let c = match cmd {
        RoleCommand::Add { name } => Change::add_role(name.clone()),
        RoleCommand::Delete { name } => Change::delete_role(name.clone()),
        RoleCommand::Grant(args) => Change::grant_permission(args.wire()?),
        RoleCommand::Revoke(args) => Change::revoke_permission(args.wire()?),
        RoleCommand::List => {
            let l = list(pd).await?;
            for r in l.get_roles() {
                let mut perms: Vec<String> = r.get_grants().iter().map(show_grant).collect();
                if r.admin {
                    perms.insert(0, "admin".into());
                }
                match p.json {
                    true => p.line(json!({"role": r.get_name(), "permissions": perms})),
                    false => p.line(format!("{}\t{}", r.get_name(), perms.join("; "))),
                }
            }
            return Ok(0);
        }
    };
    change(pd, c, p).await
}

/// `kvctl login NAME`: keeps the token in the token file.
pub async fn login_command(client: &Client, name: &str, p: &mut Printer<'_>) -> Result<i32> {
    let password = read_password("password: ")?;
    let (token, expires) = login(client.pd(), name, &password).await?;
    let path = token_file()
        .ok_or_else(|| Error::InvalidArgument("no token file: set HOME or --token-file".into()))?;
    save_token(&path, &token, expires)?;
    let secs = expires.saturating_sub(auth::now_unix_ms()) / 1000;
    p.line(format!(
        "OK: logged in as {name} for {secs} s (token in {})",
        path.display()
    ));
    Ok(0)
}

/// `kvctl logout`: forgets the saved token.
pub fn logout_command(p: &mut Printer<'_>) -> Result<i32> {
    if let Some(path) = token_file() {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "token file {}: {e}",
                    path.display()
                )))
            }
        }
    }
    p.ok();
    Ok(0)
}
