//! Users, roles and permissions: the rules both PD (which keeps users and roles and signs
//! tokens) and stores (which check every request against them) apply.
//!
//! - names and passwords: what a user or role name and a password may be ([`names`]);
//! - passwords are kept as argon2id hashes and checked in constant time ([`password`]);
//! - a token is a signed, expiring claim to a user's identity ([`token`]);
//! - a role grants read, write or both on keys, prefixes and ranges, or `admin`
//!   ([`perm`]);
//! - the replicated state compiled for checks, and who a call comes from ([`view`]).
//!
//! Rules only: the state's messages (`proto::authpb`) but no storage, no transport, no
//! other Flotilla crate. PD persists and serves what this crate describes; the stores
//! and PD enforce it.

pub mod names;
pub mod password;
pub mod perm;
pub mod token;
pub mod view;

/// Errors of the auth rules; each names what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A name, password or permission that breaks the rules.
    #[error("{0}")]
    Invalid(String),
    /// A token that does not prove anything: malformed, forged, expired, signed by an
    /// unknown key.
    #[error("{0}")]
    BadToken(String),
    /// A token newer than the state it is checked against (a user or signing key made
    /// since): the checker should catch up and the caller retry.
    #[error("{0}")]
    NotYet(String),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Now, in milliseconds since the epoch: the clock tokens expire by.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
