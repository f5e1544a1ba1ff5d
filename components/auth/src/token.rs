//! Tokens: what a user gets for a password and sends with every request. A token is
//! `base64url(claims) "." base64url(HMAC-SHA256(key, claims))`, the claims naming the
//! user, the generation of the user's record (which a password change or deletion moves
//! on, so older tokens die), the signing key's id and the expiry. PD signs; stores check
//! with the same keys, which PD rotates.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// The longest token accepted (a user name of 64 bytes makes one of about 170).
pub const MAX_TOKEN_LEN: usize = 512;

/// What a token claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The user.
    pub user: String,
    /// The generation of the user's record when the token was issued.
    pub generation: u64,
    /// Which signing key signed it.
    pub key_id: u32,
    /// When it expires (milliseconds since the epoch).
    pub expires_unix_ms: u64,
}

impl Claims {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24 + self.user.len());
        v.extend_from_slice(&self.generation.to_be_bytes());
        v.extend_from_slice(&self.key_id.to_be_bytes());
        v.extend_from_slice(&self.expires_unix_ms.to_be_bytes());
        v.extend_from_slice(self.user.as_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<Claims> {
        if b.len() < 20 {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(Claims {
            generation: u64_at(0),
            key_id: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
            expires_unix_ms: u64_at(12),
            user: String::from_utf8(b[20..].to_vec()).ok()?,
        })
    }
}

fn mac(key: &[u8], claims: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(claims);
    m
}

/// A token for `claims`, signed with `key`.
pub fn issue(claims: &Claims, key: &[u8]) -> String {
    let body = claims.encode();
    let sig = mac(key, &body).finalize().into_bytes();
    format!("{}.{}", B64.encode(&body), B64.encode(sig))
}

/// What `token` claims, unverified (to tell a token newer than the checker's state from
/// a bad one); `None` if it is malformed.
pub fn unverified_claims(token: &str) -> Option<Claims> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let (body, _) = token.split_once('.')?;
    Claims::decode(&B64.decode(body).ok()?)
}

/// The claims of `token` if it is well formed, signed by the key `key_of` gives for its
/// key id, and not expired at `now_unix_ms`; the error says which of these failed.
pub fn verify(
    token: &str,
    key_of: impl Fn(u32) -> Option<Vec<u8>>,
    now_unix_ms: u64,
) -> Result<Claims> {
    let bad = |why: &str| Err(Error::BadToken(format!("token {why}")));
    if token.len() > MAX_TOKEN_LEN {
        return bad(&format!("longer than {MAX_TOKEN_LEN} bytes"));
    }
    let Some((body, sig)) = token.split_once('.') else {
        return bad("is malformed (not CLAIMS.SIGNATURE)");
    };
    let (Ok(body), Ok(sig)) = (B64.decode(body), B64.decode(sig)) else {
        return bad("is malformed (not base64url)");
    };
    let Some(claims) = Claims::decode(&body) else {
        return bad("is malformed (truncated claims)");
    };
    let Some(key) = key_of(claims.key_id) else {
        return bad("was signed by a key this cluster does not know (foreign, or retired)");
    };
    if mac(&key, &body).verify_slice(&sig).is_err() {
        return bad("signature does not match (forged or altered)");
    }
    if claims.expires_unix_ms <= now_unix_ms {
        return bad("expired: log in again");
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            user: "alice".into(),
            generation: 3,
            key_id: 7,
            expires_unix_ms: 2_000,
        }
    }

    #[test]
    fn tokens_prove_their_claims_until_they_expire() {
        let key = b"k".repeat(32);
        let keys = |id: u32| (id == 7).then(|| key.clone());
        let t = issue(&claims(), &key);
        assert_eq!(verify(&t, keys, 1_000), Ok(claims()));
        let err = |t: &str, now| verify(t, keys, now).unwrap_err().to_string();
        assert!(err(&t, 2_000).contains("expired"));
        for cut in 1..4 {
            let e = err(&t[..t.len() - cut], 1_000);
            assert!(
                e.contains("signature") || e.contains("malformed"),
                "truncated: {e}"
            );
        }
        assert!(err("abc", 1_000).contains("malformed"));
        assert!(err("a.b.c!", 1_000).contains("malformed"));
        assert!(err(&"x".repeat(600), 1_000).contains("longer"));
        let foreign = issue(&claims(), &b"other".repeat(8));
        assert!(err(&foreign, 1_000).contains("signature"));
        let unknown = issue(
            &Claims {
                key_id: 8,
                ..claims()
            },
            &key,
        );
        assert!(err(&unknown, 1_000).contains("does not know"));
        // Claims edited after signing (a longer life, another user) do not verify.
        let (_, sig) = t.split_once('.').unwrap();
        let edited = Claims {
            user: "root".into(),
            ..claims()
        };
        let forged = format!("{}.{sig}", B64.encode(edited.encode()));
        assert!(err(&forged, 1_000).contains("signature"));
    }
}
