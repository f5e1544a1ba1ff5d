use engine::Cf;

use crate::{Error, Result};

/// What a scan calls on each pair, until it returns `false`.
pub type ScanFn<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// A consistent view of a region's data that commands read; taken after the leader has
/// confirmed it still leads (ReadIndex or lease), so that it holds every write the
/// region acknowledged.
pub trait Snapshot {
    /// One value.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Calls `f` on the pairs of `[start, end)` in key order (descending if `reverse`)
    /// until it returns `false`.
    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        f: &mut ScanFn<'_>,
    ) -> Result<()>;
}

impl Snapshot for engine::Snapshot<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(engine::Snapshot::get(self, cf, key)?)
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        f: &mut ScanFn<'_>,
    ) -> Result<()> {
        // The engine's callbacks return its own error: keep ours aside and stop.
        let mut failed: Option<Error> = None;
        let mut each = |k: &[u8], v: &[u8]| match f(k, v) {
            Ok(go_on) => Ok(go_on),
            Err(e) => {
                failed = Some(e);
                Ok(false)
            }
        };
        if reverse {
            engine::Snapshot::scan_reverse(self, cf, start, end, &mut each)?;
        } else {
            engine::Snapshot::scan(self, cf, start, end, &mut each)?;
        }
        failed.map_or(Ok(()), Err)
    }
}
