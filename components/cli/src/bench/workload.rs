//! What the workers do: the workloads (YCSB's core mixes and Flotilla's own), the key
//! space and how keys are chosen in it.

use std::sync::atomic::{AtomicU64, Ordering};

use clap::ValueEnum;
use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// Workloads. YCSB's are its core workloads as published (A to C and E).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Inserts every key once, in parallel, then stops (run it before the others).
    Load,
    /// Half reads, half updates (YCSB A).
    #[value(alias = "mixed")]
    YcsbA,
    /// 95 % reads, 5 % updates (YCSB B).
    YcsbB,
    /// Only reads (YCSB C).
    #[value(alias = "read")]
    YcsbC,
    /// 95 % short scans, 5 % inserts of new keys (YCSB E).
    YcsbE,
    /// Only updates.
    #[value(alias = "write")]
    WriteOnly,
    /// Transactions that read two keys and write both (`--txn-commit` says how they
    /// commit). The key space is split in two first; a conflict counts as an error.
    Txn,
    /// Transactions that update one key, `hot` (1PC): old versions pile up under it
    /// unless GC drops them. Run it with one client (others would conflict).
    Hot,
}

impl Workload {
    /// The workload's name as given on the command line.
    pub fn name(self) -> String {
        self.to_possible_value()
            .expect("no workload is skipped")
            .get_name()
            .to_string()
    }

    /// Whether `--read-ratio` may change its mix.
    pub fn has_read_ratio(self) -> bool {
        matches!(
            self,
            Workload::YcsbA | Workload::YcsbB | Workload::YcsbC | Workload::WriteOnly
        )
    }

    /// Whether it needs Flotilla's transactions.
    pub fn is_transactional(self) -> bool {
        matches!(self, Workload::Txn | Workload::Hot)
    }

    /// Its mix of operations; `read_ratio` (checked by the caller to be in [0, 1])
    /// replaces the read share of the read/update mixes.
    pub fn mix(self, read_ratio: Option<f64>) -> Mix {
        let read_update = |read: f64| Mix::ReadUpdate {
            read: read_ratio.unwrap_or(read),
        };
        match self {
            Workload::Load => Mix::Load,
            Workload::YcsbA => read_update(0.5),
            Workload::YcsbB => read_update(0.95),
            Workload::YcsbC => read_update(1.0),
            Workload::WriteOnly => read_update(0.0),
            Workload::YcsbE => Mix::ScanInsert { scan: 0.95 },
            Workload::Txn => Mix::Txn,
            Workload::Hot => Mix::Hot,
        }
    }
}

/// How a workload picks its next operation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mix {
    /// Inserts of the next unloaded key.
    Load,
    /// A read with probability `read`, else an update.
    ReadUpdate {
        /// The read share.
        read: f64,
    },
    /// A scan with probability `scan`, else an insert of a new key.
    ScanInsert {
        /// The scan share.
        scan: f64,
    },
    /// One transaction of the `txn` workload.
    Txn,
    /// One transaction of the `hot` workload.
    Hot,
}

/// Kinds of operation, each reported on its own line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// A point read.
    Read,
    /// A write of an existing key.
    Update,
    /// A write of a new key.
    Insert,
    /// A short range read.
    Scan,
    /// A whole transaction.
    Txn,
}

impl Op {
    /// Every kind, in report order.
    pub const ALL: [Op; 5] = [Op::Read, Op::Update, Op::Insert, Op::Scan, Op::Txn];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Update => "update",
            Op::Insert => "insert",
            Op::Scan => "scan",
            Op::Txn => "txn",
        }
    }
}

impl Mix {
    /// The next operation's kind.
    pub fn pick(self, rng: &mut impl Rng) -> Op {
        match self {
            Mix::Load => Op::Insert,
            Mix::ReadUpdate { read } if rng.gen_bool(read) => Op::Read,
            Mix::ReadUpdate { .. } => Op::Update,
            Mix::ScanInsert { scan } if rng.gen_bool(scan) => Op::Scan,
            Mix::ScanInsert { .. } => Op::Insert,
            Mix::Txn | Mix::Hot => Op::Txn,
        }
    }
}

/// How keys are drawn from the loaded key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// A few keys hot (YCSB's zipfian constant 0.99), the hot ones spread over the key
    /// space rather than bunched at its start.
    Zipfian,
}

/// YCSB's zipfian constant.
const ZIPF_THETA: f64 = 0.99;

/// The key space: `count` keys of `size` bytes, drawn as `distribution` says, plus the
/// new keys inserts add after them.
pub struct KeySpace {
    count: u64,
    size: usize,
    width: usize,
    zipf: Option<(Zipf<f64>, u64)>,
    next_insert: AtomicU64,
}

impl KeySpace {
    /// A key space; `Err` says why the sizes do not fit together.
    pub fn new(count: u64, size: usize, distribution: KeyDistribution) -> Result<KeySpace, String> {
        let digits = (count - 1).max(1).ilog10() as usize + 1;
        if size < digits {
            return Err(format!(
                "--key-size {size} cannot hold {count} distinct keys: they need {digits} bytes"
            ));
        }
        let zipf = match distribution {
            KeyDistribution::Uniform => None,
            KeyDistribution::Zipfian => {
                let z = Zipf::new(count, ZIPF_THETA).map_err(|e| format!("zipfian keys: {e}"))?;
                Some((z, scrambler(count)))
            }
        };
        Ok(KeySpace {
            count,
            size,
            // The number leads and fills at least 8 bytes, so that a split at any key
            // separates the keys before it from those after it in Flotilla's encoded
            // transactional key space (which compares keys 8 bytes at a time).
            width: digits.max(size.min(8)),
            zipf,
            next_insert: AtomicU64::new(count),
        })
    }

    /// How many keys were loaded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Key number `i`: the number, zero-padded, then filler up to the key size.
    pub fn key(&self, i: u64) -> Vec<u8> {
        let mut k = format!("{i:0w$}", w = self.width).into_bytes();
        k.resize(self.size.max(k.len()), b'k');
        k
    }

    /// The number of a loaded key, drawn by the distribution.
    pub fn pick(&self, rng: &mut impl Rng) -> u64 {
        match &self.zipf {
            None => rng.gen_range(0..self.count),
            Some((z, mult)) => {
                let rank = (z.sample(rng) as u64).clamp(1, self.count) - 1;
                ((rank as u128 * *mult as u128) % self.count as u128) as u64
            }
        }
    }

    /// A key number no insert has used yet.
    pub fn next_insert(&self) -> u64 {
        self.next_insert.fetch_add(1, Ordering::Relaxed)
    }
}

/// A multiplier coprime with `n`, so that `rank * m mod n` permutes the ranks.
fn scrambler(n: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let mut m = 0x9E37_79B9_7F4A_7C15 % n.max(2);
    while gcd(m, n) != 1 {
        m += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size_and_sort_by_number() {
        let ks = KeySpace::new(100_000, 16, KeyDistribution::Uniform).unwrap();
        let (a, b) = (ks.key(9), ks.key(10_000));
        assert_eq!((a.len(), b.len()), (16, 16));
        assert!(a < b);
        assert_eq!(&a[..8], b"00000009");
    }

    #[test]
    fn a_key_size_too_small_for_the_count_is_refused() {
        let e = KeySpace::new(100_000, 4, KeyDistribution::Uniform)
            .err()
            .unwrap();
        assert!(e.contains("need 5 bytes"), "{e}");
        assert!(KeySpace::new(1, 1, KeyDistribution::Uniform).is_ok());
    }

    #[test]
    fn zipfian_keys_stay_in_range_and_are_skewed() {
        let ks = KeySpace::new(1000, 16, KeyDistribution::Zipfian).unwrap();
        let mut rng = rand::thread_rng();
        let mut hits = vec![0u32; 1000];
        for _ in 0..100_000 {
            hits[ks.pick(&mut rng) as usize] += 1;
        }
        hits.sort_unstable();
        // Under theta 0.99 the hottest key gets about 13 % of the draws; uniform: 0.1 %.
        assert!(hits[999] > 5_000, "hottest {}", hits[999]);
        assert!(hits[0] < 100);
    }

    #[test]
    fn the_scrambler_permutes() {
        for n in [1u64, 2, 10, 1000, 4096] {
            let m = scrambler(n);
            let mut seen: Vec<u64> = (0..n)
                .map(|r| (r as u128 * m as u128 % n as u128) as u64)
                .collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len() as u64, n);
        }
    }

    #[test]
    fn read_ratio_replaces_the_mix() {
        assert_eq!(
            Workload::YcsbB.mix(Some(0.3)),
            Mix::ReadUpdate { read: 0.3 }
        );
        assert_eq!(Workload::YcsbC.mix(None), Mix::ReadUpdate { read: 1.0 });
        assert_eq!(
            Workload::WriteOnly.mix(None).pick(&mut rand::thread_rng()),
            Op::Update
        );
    }
}
