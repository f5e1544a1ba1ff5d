//! Users, roles and permissions: the rules both PD (which keeps users and roles and signs
//! tokens) and stores (which check every request against them) apply.
//!
//! - names and passwords: what a user or role name and a password may be ([`names`]);
//! - passwords are kept as argon2id hashes and checked in constant time ([`password`]);
//! - a token is a signed, expiring claim to a user's identity ([`token`]);
//! - a role grants read, write or both on keys, prefixes and ranges, or `admin`
//!   ([`perm`]).
//!
//! Pure rules: no storage, no wire protocol, no Flotilla crate. PD persists and serves
//! what this crate describes; the server enforces it.

pub mod names;
pub mod password;
pub mod perm;
pub mod token;

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
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
