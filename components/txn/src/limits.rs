//! The bounds every transactional request is held to before anything is read or
//! written: key sizes, key counts and lock TTLs. A request past one gets
//! [`Error::InvalidRequest`] naming the field; timestamps are bounded by the caller,
//! which knows PD's clock.

use std::collections::HashSet;

use crate::{error::show, Error, Result};

/// The `[txn]` limits of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest key, primary or secondary, in bytes.
    pub max_key_size: usize,
    /// Most keys one command may name (mutations, keys, secondaries, transactions).
    pub max_keys: usize,
    /// Longest lock TTL a transaction may ask for, in milliseconds.
    pub max_ttl_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_size: 8 << 10,
            max_keys: 10_000,
            max_ttl_ms: 60 * 60 * 1000,
        }
    }
}

fn invalid<T>(why: String) -> Result<T> {
    Err(Error::InvalidRequest(why))
}

impl Limits {
    /// Refuses an empty or oversized key, naming the field.
    pub fn check_key(&self, field: &str, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return invalid(format!("{field} must not be empty"));
        }
        if key.len() > self.max_key_size {
            return invalid(format!(
                "{field} {} is {} bytes, more than txn.max-key-size ({})",
                show(&key[..key.len().min(32)]),
                key.len(),
                self.max_key_size
            ));
        }
        Ok(())
    }

    /// Refuses more than `max_keys` items in `field`.
    pub fn check_count(&self, field: &str, n: usize) -> Result<()> {
        if n > self.max_keys {
            return invalid(format!(
                "{field} has {n} entries, more than txn.max-keys-per-command ({})",
                self.max_keys
            ));
        }
        Ok(())
    }

    /// The keys of a command: at least one, within the count, none empty, none twice.
    /// Their sizes are checked only where a new lock is taken ([`Self::check_new_keys`]):
    /// a key stored before a lower limit must stay readable and resolvable.
    pub fn check_keys<'a>(
        &self,
        field: &str,
        keys: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Result<()> {
        if keys.len() == 0 {
            return invalid(format!("{field}: no keys given"));
        }
        self.check_count(field, keys.len())?;
        let mut seen = HashSet::new();
        for k in keys {
            if k.is_empty() {
                return invalid(format!("{field}: a key must not be empty"));
            }
            if !seen.insert(k) {
                return invalid(format!("{field}: key {} is given twice", show(k)));
            }
        }
        Ok(())
    }

    /// Like [`Self::check_keys`], and each key within `max_key_size`: for commands that
    /// lock keys.
    pub fn check_new_keys<'a>(
        &self,
        field: &str,
        keys: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
    ) -> Result<()> {
        self.check_keys(field, keys.clone())?;
        keys.into_iter().try_for_each(|k| self.check_key(field, k))
    }

    /// Refuses a TTL above `max_ttl_ms` (a lock nobody may roll back for longer would
    /// block its keys that long after its client died).
    pub fn check_ttl(&self, field: &str, ttl_ms: u64) -> Result<()> {
        if ttl_ms > self.max_ttl_ms {
            return invalid(format!(
                "{field} {ttl_ms} ms is above txn.max-lock-ttl ({} ms)",
                self.max_ttl_ms
            ));
        }
        Ok(())
    }
}
