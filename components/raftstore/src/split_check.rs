//! The split checker: measures a region off the Raft threads and finds where to cut it.
//!
//! A leader asks for a check only after enough has been written to its region since the
//! last one (`region-split-check-diff`), so quiet regions are never read. A region past a
//! limit is cut every half limit, into at most [`MAX_SPLIT_KEYS`] + 1 pieces per check;
//! the scan stops there, so one check never reads more than a few limits' worth, and a
//! region far past its limit (a bulk load) is cut in a handful of checks.

use crossbeam_channel::Receiver;
use engine::{Cf, Engine, Pair};
use slog::{warn, Logger};

use crate::{
    metrics,
    msg::{PeerMsg, SplitCheckTask},
    RaftRouter,
};

/// What one scan found.
#[derive(Debug, PartialEq, Eq)]
pub struct Measured {
    /// Bytes seen (a lower bound if the scan stopped early).
    pub size: u64,
    /// Keys seen (likewise).
    pub keys: u64,
    /// Where to split, ascending; empty if the region is within its limits.
    pub split_keys: Vec<Vec<u8>>,
}

/// Most split keys one check proposes: a region far past its limit is cut into this many
/// pieces at once instead of one piece per check, and the scan stops there.
pub const MAX_SPLIT_KEYS: usize = 16;

/// Scans the region's data in every data column family, in key order, and proposes a
/// cut every half limit, if the whole is past a limit. A cut never falls between the
/// versions of one transactional key. The scan stops after [`MAX_SPLIT_KEYS`] cuts.
pub fn measure(engine: &Engine, task: &SplitCheckTask) -> engine::Result<Measured> {
    let region = &task.region;
    let start = keys::data_key(region.get_start_key());
    let end = keys::data_end_key(region.get_end_key());
    let (half_size, half_keys) = (task.split_size / 2, task.split_keys / 2);
    let (mut size, mut count) = (0u64, 0u64);
    // Since the last cut (or the region's start).
    let (mut piece_size, mut piece_keys) = (0u64, 0u64);
    let mut cuts: Vec<Vec<u8>> = vec![];
    let snap = engine.snapshot();
    let mut pairs = Merged::new(
        Cf::DATA
            .iter()
            .map(|cf| snap.iter(*cf, &start, &end))
            .collect(),
    )?;
    // Where the current piece's first key could be cut at: a cut must be above it.
    let mut piece_first = vec![];
    while let Some((k, v)) = pairs.next()? {
        let len = (k.len() + v.len()) as u64;
        let point = || {
            keys::txn::split_point(
                keys::origin_key(&k).expect("keys in the data range carry the data prefix"),
            )
        };
        // A cut at `k` (or, for a version, just before its key's versions) when the piece
        // would grow past half a limit; never one that leaves the piece empty.
        if (piece_size + len > half_size || piece_keys + 1 > half_keys)
            && piece_keys > 0
            && point() > piece_first.as_slice()
        {
            cuts.push(point().to_vec());
            (piece_size, piece_keys) = (0, 0);
        }
        if piece_keys == 0 {
            piece_first = point().to_vec();
        }
        piece_size += len;
        piece_keys += 1;
        size += len;
        count += 1;
        if cuts.len() >= MAX_SPLIT_KEYS {
            break;
        }
    }
    let past_limit = size > task.split_size || count > task.split_keys;
    if !past_limit {
        cuts.clear();
    } else if cuts.len() < MAX_SPLIT_KEYS
        && piece_size <= half_size / 2
        && piece_keys <= half_keys / 2
    {
        // The scan reached the end: fold a small tail into the piece before it.
        cuts.pop();
    }
    Ok(Measured {
        size,
        keys: count,
        split_keys: cuts,
    })
}

/// Several column families' pairs merged into one stream in key order.
struct Merged<I> {
    iters: Vec<I>,
    /// Each iterator's next pair, read ahead.
    heads: Vec<Option<Pair>>,
}

impl<I: Iterator<Item = engine::Result<Pair>>> Merged<I> {
    fn new(mut iters: Vec<I>) -> engine::Result<Self> {
        let heads = iters
            .iter_mut()
            .map(|it| it.next().transpose())
            .collect::<engine::Result<_>>()?;
        Ok(Merged { iters, heads })
    }

    fn next(&mut self) -> engine::Result<Option<Pair>> {
        let smallest = (0..self.heads.len())
            .filter_map(|i| Some((i, &self.heads[i].as_ref()?.0)))
            .min_by(|a, b| a.1.cmp(b.1))
            .map(|(i, _)| i);
        let Some(i) = smallest else {
            return Ok(None);
        };
        let next = self.iters[i].next().transpose()?;
        Ok(std::mem::replace(&mut self.heads[i], next))
    }
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
                        let outcome = if m.split_keys.is_empty() {
                            "small"
                        } else {
                            "split"
                        };
                        metrics::SPLIT_CHECKS.with_label_values(&[outcome]).inc();
                        let _ = router.force_send(
                            region_id,
                            PeerMsg::SplitCheckResult {
                                epoch: task.region.get_region_epoch().clone(),
                                size: m.size,
                                keys: m.keys,
                                split_keys: m.split_keys,
                            },
                        );
                    }
                    Err(e) => {
                        metrics::SPLIT_CHECKS.with_label_values(&["error"]).inc();
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
        let mut region = proto::metapb::Region::default();
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
        assert!(m.split_keys.is_empty());
    }

    #[test]
    fn cuts_every_half_limit_and_folds_a_small_tail() {
        let (_d, e) = engine_with(11);
        // 96 bytes a pair, 1,056 in all past a 960-byte limit: pieces of five keys (480
        // bytes) and a one-key tail folded into the second piece.
        let m = measure(&e, &task(b"", b"", 960, 1_000_000)).unwrap();
        assert_eq!(m.split_keys, vec![b"k0005".to_vec()]);
    }

    #[test]
    fn a_region_far_past_its_limit_is_cut_many_times_in_one_bounded_scan() {
        let (_d, e) = engine_with(1000);
        let m = measure(&e, &task(b"", b"", 960, 1_000_000)).unwrap();
        assert_eq!(m.split_keys.len(), MAX_SPLIT_KEYS);
        assert_eq!(m.split_keys[0], b"k0005".to_vec());
        assert_eq!(m.split_keys[1], b"k0010".to_vec());
        assert!(
            m.keys <= 5 * MAX_SPLIT_KEYS as u64 + 1,
            "the scan stops early"
        );
    }

    #[test]
    fn splits_by_key_count_within_the_range() {
        let (_d, e) = engine_with(1000);
        let m = measure(&e, &task(b"k0100", b"k0130", 1 << 30, 20)).unwrap();
        assert_eq!(m.split_keys, vec![b"k0110".to_vec(), b"k0120".to_vec()]);
    }

    #[test]
    fn every_data_cf_counts_and_versions_of_one_key_stay_together() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path()).unwrap();
        let mut wb = e.write_batch();
        for u in 0..4 {
            let user = format!("u{u}");
            wb.put(Cf::Lock, &keys::txn::lock_key(user.as_bytes()), &[0; 10]);
            for ts in 1..=10 {
                wb.put(
                    Cf::Write,
                    &keys::txn::write_key(user.as_bytes(), ts),
                    &[0; 10],
                );
            }
        }
        wb.put(Cf::Default, &keys::data_key(b"raw"), &[0; 10]);
        e.write(wb, false).unwrap();
        // Half a limit is three keys, less than one key's versions.
        let m = measure(&e, &task(b"", b"", 1 << 30, 6)).unwrap();
        assert_eq!(m.keys, 4 * 11 + 1);
        let at = |u: &str| keys::txn::encode_bytes(u.as_bytes());
        // "raw" sorts first; each transactional key's versions are one piece.
        assert_eq!(m.split_keys, vec![at("u0"), at("u1"), at("u2"), at("u3")]);
    }

    #[test]
    fn a_single_huge_key_is_never_a_split_point() {
        let (_d, e) = engine_with(1);
        let m = measure(&e, &task(b"k0000", b"", 10, 1_000_000)).unwrap();
        assert!(m.split_keys.is_empty());
    }
}
