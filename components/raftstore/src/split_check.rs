//! The split checker: measures a region off the Raft threads and finds where to cut it.
//!
//! A leader asks for a check only after enough has been written to its region since the
//! last one (`region-split-check-diff`), so quiet regions are never read. The scan is
//! bounded: it stops as soon as the region is known to be past a limit, and the split
//! key is the first key past half of that limit, so a region that grew far past its
//! limit is cut again on the next check rather than read whole.

use crossbeam_channel::Receiver;
use engine::{Cf, Engine};
use proto::metapb;
use slog::{warn, Logger};

use crate::{msg::PeerMsg, RaftRouter};

/// Measure one region.
pub struct SplitCheckTask {
    /// The region as its leader saw it.
    pub region: metapb::Region,
    /// Split past this many bytes of keys and values.
    pub split_size: u64,
    /// Split past this many keys.
    pub split_keys: u64,
}

/// What one scan found.
#[derive(Debug, PartialEq, Eq)]
pub struct Measured {
    /// Bytes seen (a lower bound if the scan stopped early).
    pub size: u64,
    /// Keys seen (likewise).
    pub keys: u64,
    /// The key to split at, if the region is past a limit.
    pub split_key: Option<Vec<u8>>,
}

/// Scans the region's data until it is past a limit or ends.
pub fn measure(engine: &Engine, task: &SplitCheckTask) -> engine::Result<Measured> {
    let region = &task.region;
    let start = keys::data_key(region.get_start_key());
    let end = keys::data_end_key(region.get_end_key());
    let (mut size, mut count) = (0u64, 0u64);
    let (mut half_by_size, mut half_by_keys) = (None, None);
    let mut split_key = None;
    engine.scan(Cf::Default, &start, &end, |k, v| {
        size += (k.len() + v.len()) as u64;
        count += 1;
        // The region's first key cannot be a split key: the left part would be empty.
        if k != start.as_slice() {
            if half_by_size.is_none() && size > task.split_size / 2 {
                half_by_size = Some(k.to_vec());
            }
            if half_by_keys.is_none() && count > task.split_keys / 2 {
                half_by_keys = Some(k.to_vec());
            }
        }
        if size > task.split_size && half_by_size.is_some() {
            split_key = half_by_size.take();
        } else if count > task.split_keys && half_by_keys.is_some() {
            split_key = half_by_keys.take();
        }
        Ok(split_key.is_none())
    })?;
    Ok(Measured {
        size,
        keys: count,
        split_key: split_key.map(|k| {
            keys::origin_key(&k)
                .expect("keys in the data range carry the data prefix")
                .to_vec()
        }),
    })
}

/// Runs checks until every sender of `tasks` is gone, reporting to the regions' peers.
pub fn spawn(
    engine: Engine,
    router: RaftRouter,
    tasks: Receiver<SplitCheckTask>,
    logger: Logger,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("split-check".into())
        .spawn(move || {
            for task in tasks {
                let region_id = task.region.get_id();
                match measure(&engine, &task) {
                    Ok(m) => {
                        let _ = router.send(
                            region_id,
                            PeerMsg::SplitCheckResult {
                                epoch: task.region.get_region_epoch().clone(),
                                size: m.size,
                                keys: m.keys,
                                split_key: m.split_key,
                            },
                        );
                    }
                    Err(e) => {
                        warn!(logger, "split check failed"; "region_id" => region_id, "err" => %e)
                    }
                }
            }
        })
        .expect("spawn split checker")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_with(n: usize) -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut wb = engine.write_batch();
        for i in 0..n {
            wb.put(
                Cf::Default,
                &keys::data_key(format!("k{i:04}").as_bytes()),
                &[0u8; 90],
            );
        }
        engine.write(wb, false).unwrap();
        (dir, engine)
    }

    fn task(start: &[u8], end: &[u8], split_size: u64, split_keys: u64) -> SplitCheckTask {
        let mut region = metapb::Region::default();
        region.set_start_key(start.to_vec());
        region.set_end_key(end.to_vec());
        SplitCheckTask {
            region,
            split_size,
            split_keys,
        }
    }

    #[test]
    fn small_region_is_measured_whole_and_not_split() {
        let (_d, e) = engine_with(10);
        let m = measure(&e, &task(b"", b"", 1 << 20, 1000)).unwrap();
        assert_eq!(m.keys, 10);
        assert_eq!(m.size, 10 * (6 + 90));
        assert_eq!(m.split_key, None);
    }

    #[test]
    fn splits_at_half_the_size_limit_and_stops_early() {
        let (_d, e) = engine_with(1000);
        // 96 bytes a pair: past 960 bytes after 11 keys; half the limit after 6.
        let m = measure(&e, &task(b"", b"", 960, 1_000_000)).unwrap();
        assert_eq!(m.split_key.as_deref(), Some(&b"k0005"[..]));
        assert_eq!(m.keys, 11, "the scan stops once past the limit");
    }

    #[test]
    fn splits_by_key_count_within_the_range() {
        let (_d, e) = engine_with(1000);
        let m = measure(&e, &task(b"k0100", b"k0200", 1 << 30, 10)).unwrap();
        assert_eq!(m.split_key.as_deref(), Some(&b"k0105"[..]));
    }

    #[test]
    fn a_single_huge_key_is_never_a_split_point() {
        let (_d, e) = engine_with(1);
        let m = measure(&e, &task(b"k0000", b"", 10, 1_000_000)).unwrap();
        assert_eq!(m.split_key, None);
    }
}
