//! What user names, role names and passwords may be.

use crate::{Error, Result};

/// The longest user or role name.
pub const MAX_NAME_LEN: usize = 64;
/// The longest password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 256;

/// A user or role name: 1 to 64 of `A-Z a-z 0-9 . _ - @` (a certificate's common name
/// names a user, so the same characters as `kvctl cert issue` takes).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    match ok {
        true => Ok(()),
        false => Err(Error::Invalid(format!(
            "{what} name {:?}: 1 to {MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '.', '_', '-', '@'",
            truncate(name)
        ))),
    }
}

/// A password: 1 to 256 bytes of UTF-8 without control characters.
pub fn check_password(password: &str) -> Result<()> {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Err(Error::Invalid(format!(
            "a password is 1 to {MAX_PASSWORD_LEN} bytes"
        )));
    }
    if password.chars().any(char::is_control) {
        return Err(Error::Invalid(
            "a password must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// At most 80 characters of `s`, for error messages.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_passwords_are_bounded_and_printable() {
        for ok in ["root", "alice@example.com", "a.b_c-d", &"x".repeat(64)] {
            assert!(check_name("user", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "a\nb", &"x".repeat(65), "é"] {
            let err = check_name("user", bad).unwrap_err().to_string();
            assert!(err.starts_with("user name"), "{err}");
        }
        assert!(check_password("correct horse").is_ok());
        assert!(check_password("").is_err());
        assert!(check_password(&"p".repeat(257)).is_err());
        assert!(check_password("tab\there").is_err());
    }
}
