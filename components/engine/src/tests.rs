use crate::{file_checksum, Cf, Engine};

fn open(dir: &tempfile::TempDir) -> Engine {
    Engine::open(dir.path()).expect("open engine")
}

#[test]
fn column_families_are_separate() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(&dir);
    let mut wb = e.write_batch();
    wb.put(Cf::Default, b"k", b"data");
    wb.put(Cf::Raft, b"k", b"raft");
    e.write(wb, true).unwrap();
    assert_eq!(
        e.get(Cf::Default, b"k").unwrap().as_deref(),
        Some(&b"data"[..])
    );
    assert_eq!(
        e.get(Cf::Raft, b"k").unwrap().as_deref(),
        Some(&b"raft"[..])
    );
    assert_eq!(e.get(Cf::Lock, b"k").unwrap(), None);
    assert_eq!(Cf::from_name("write"), Some(Cf::Write));
    assert_eq!(Cf::from_name("nope"), None);
}

#[test]
fn a_batch_lands_whole_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(&dir);
        // Data and the apply state that covers it, in one batch.
        let mut wb = e.write_batch();
        for i in 0..100u32 {
            wb.put(Cf::Default, &i.to_be_bytes(), b"v");
        }
        wb.put(Cf::Raft, b"apply-state", &100u64.to_be_bytes());
        assert_eq!(wb.len(), 101);
        e.write(wb, true).unwrap();
        // A batch that is never written leaves nothing behind.
        let mut dropped = e.write_batch();
        dropped.put(Cf::Default, b"never", b"v");
        drop(dropped);
    }
    let e = open(&dir);
    let mut n = 0;
    e.scan(Cf::Default, &[], &[0xff; 8], |_, _| {
        n += 1;
        Ok(true)
    })
    .unwrap();
    assert_eq!(n, 100);
    assert_eq!(
        e.get(Cf::Raft, b"apply-state").unwrap(),
        Some(100u64.to_be_bytes().to_vec())
    );
    assert_eq!(e.get(Cf::Default, b"never").unwrap(), None);
}

#[test]
fn scans_respect_bounds_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(&dir);
    let mut wb = e.write_batch();
    for k in [b"a", b"b", b"c", b"d"] {
        wb.put(Cf::Default, k, k);
    }
    e.write(wb, false).unwrap();
    let mut fwd = vec![];
    e.scan(Cf::Default, b"b", b"d", |k, _| {
        fwd.push(k.to_vec());
        Ok(true)
    })
    .unwrap();
    assert_eq!(fwd, vec![b"b".to_vec(), b"c".to_vec()]);
    let mut rev = vec![];
    e.scan_reverse(Cf::Default, b"a", b"d", |k, _| {
        rev.push(k.to_vec());
        Ok(rev.len() < 2)
    })
    .unwrap();
    assert_eq!(rev, vec![b"c".to_vec(), b"b".to_vec()]);
    let mut wb = e.write_batch();
    wb.delete_range(Cf::Default, b"b", b"d");
    e.write(wb, false).unwrap();
    assert_eq!(e.get(Cf::Default, b"c").unwrap(), None);
    assert!(e.get(Cf::Default, b"d").unwrap().is_some());
}

#[test]
fn snapshot_does_not_see_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(&dir);
    let mut wb = e.write_batch();
    wb.put(Cf::Default, b"k", b"old");
    e.write(wb, false).unwrap();
    let snap = e.snapshot();
    let mut wb = e.write_batch();
    wb.put(Cf::Default, b"k", b"new");
    wb.put(Cf::Default, b"k2", b"new");
    e.write(wb, false).unwrap();
    assert_eq!(
        snap.get(Cf::Default, b"k").unwrap().as_deref(),
        Some(&b"old"[..])
    );
    assert_eq!(snap.get(Cf::Default, b"k2").unwrap(), None);
    assert_eq!(
        e.get(Cf::Default, b"k").unwrap().as_deref(),
        Some(&b"new"[..])
    );
}

#[test]
fn sst_export_and_ingest_move_a_range() {
    let src_dir = tempfile::tempdir().unwrap();
    let dst_dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let src = open(&src_dir);
    let dst = open(&dst_dir);
    let mut wb = src.write_batch();
    for i in 0..1000u32 {
        wb.put(Cf::Default, format!("k{i:04}").as_bytes(), &i.to_le_bytes());
    }
    src.write(wb, false).unwrap();

    let snap = src.snapshot();
    let path = files.path().join("default.sst");
    let meta = snap
        .export_sst(Cf::Default, b"k0100", b"k0200", &path)
        .unwrap()
        .expect("range has keys");
    assert_eq!(meta.keys, 100);
    assert_eq!(file_checksum(&path).unwrap(), (meta.size, meta.checksum));
    let empty = snap
        .export_sst(Cf::Lock, b"", b"\xff", &files.path().join("lock.sst"))
        .unwrap();
    assert!(empty.is_none(), "an empty range writes no file");

    dst.ingest(Cf::Default, &[path]).unwrap();
    let mut n = 0;
    dst.scan(Cf::Default, b"", b"\xff", |k, _| {
        assert!(k >= &b"k0100"[..] && k < &b"k0200"[..]);
        n += 1;
        Ok(true)
    })
    .unwrap();
    assert_eq!(n, 100);
}

#[test]
fn stats_see_the_memory_budget_memtables_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let opts = crate::EngineOptions {
        block_cache_bytes: 16 << 20,
        memtable_budget_bytes: 8 << 20,
        write_buffer_bytes: 1 << 20,
        max_background_jobs: 2,
        default_cf_drop: None,
    };
    let e = Engine::open_with(dir.path(), &opts).unwrap();
    for i in 0..2000u32 {
        let mut wb = e.write_batch();
        wb.put(Cf::Default, format!("k{i:05}").as_bytes(), &[7u8; 1024]);
        e.write(wb, false).unwrap();
    }
    let s = e.stats();
    assert_eq!(s.block_cache_capacity, 16 << 20);
    assert_eq!(s.memtable_budget, 8 << 20);
    assert!(s.memtable_bytes > 0, "{s:?}");
    // 2 MB through 1 MiB memtables: some are flushed to files, in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = e.stats();
        let default = s.cfs.iter().find(|c| c.cf == "default").unwrap().clone();
        if default.sst_files > 0 {
            assert!(default.sst_bytes > 0 && default.estimated_keys > 0, "{s:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing flushed: {s:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
