//! Passwords, kept as argon2id hashes (PHC strings) and never in the clear.

use std::sync::LazyLock;

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};

use crate::{Error, Result};

/// The hash of a password (argon2id with the crate's default cost and a random salt).
pub fn hash(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Invalid(format!("cannot hash the password: {e}")))
}

/// A hash no password matches, checked in place of an unknown user's: a login for a
/// name that does not exist takes as long as one with a wrong password.
static DUMMY: LazyLock<String> =
    LazyLock::new(|| hash("no user has this password").expect("hashing a constant works"));

/// Whether `password` matches `stored` (a user's hash, or `None` for an unknown user,
/// which never matches but costs the same). Argon2 compares in constant time.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    let found = stored.is_some();
    let stored = stored.unwrap_or(DUMMY.as_str());
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let matches = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    matches && found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_matches_its_password_only() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("s3cret"));
        assert!(verify("s3cret", Some(&h)));
        assert!(!verify("s3cret!", Some(&h)));
        assert!(
            !verify("no user has this password", None),
            "the dummy never matches"
        );
        assert!(!verify("x", Some("not a hash")));
        assert_ne!(hash("s3cret").unwrap(), h, "salted");
    }
}
