//! Through a real FUSE mount: what was fsynced survives a power loss, the rest is
//! taken back. Needs root and /dev/fuse; says so and passes where they are missing.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::FileExt,
    path::Path,
};

use crate::LazyFs;

fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: mounting FUSE needs root and /dev/fuse");
        return false;
    }
    true
}

fn synced_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_power_loss_keeps_what_was_fsynced_and_drops_the_rest() {
    if !can_mount() {
        return;
    }
    let backing = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mut fs = LazyFs::mount(backing.path(), mnt.path()).unwrap();
    let at = |name: &str| mnt.path().join(name);

    // A log: synced, then appended to and overwritten without a sync.
    synced_file(&at("log"), b"synced-part");
    let f = OpenOptions::new().write(true).open(at("log")).unwrap();
    f.write_all_at(b"SYNCED", 0).unwrap();
    f.write_all_at(b"+unsynced-tail", 11).unwrap();
    drop(f);
    // A file opened with O_TRUNC and written again, never synced.
    synced_file(&at("trunc"), b"0123456789");
    let mut f = File::create(at("trunc")).unwrap();
    f.write_all(b"abcdefghijklmnop").unwrap();
    drop(f);
    // A file never synced.
    fs::write(at("fresh"), b"gone").unwrap();
    // Moved into place by a hard link and an unlink of its old name, then synced.
    fs::write(at("tmp"), b"linked").unwrap();
    fs::hard_link(at("tmp"), at("final")).unwrap();
    fs::remove_file(at("tmp")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(at("final"))
        .unwrap()
        .sync_all()
        .unwrap();
    // A punched hole in synced data, unsynced.
    synced_file(&at("holed"), &[7u8; 8192]);
    let f = OpenOptions::new().write(true).open(at("holed")).unwrap();
    // SAFETY: a valid descriptor; fallocate reads no memory of ours.
    let rc = unsafe {
        use std::os::fd::AsRawFd;
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        )
    };
    drop(f);
    let punched = rc == 0;

    let dropped = fs.power_loss().unwrap();
    assert!(dropped.files >= 3, "nothing was dropped: {dropped:?}");
    assert_eq!(fs::read(at("log")).unwrap(), b"synced-part");
    assert_eq!(fs::read(at("trunc")).unwrap(), b"0123456789");
    assert_eq!(fs::read(at("fresh")).unwrap(), b"");
    assert_eq!(fs::read(at("final")).unwrap(), b"linked");
    if punched {
        assert_eq!(fs::read(at("holed")).unwrap(), vec![7u8; 8192]);
    }
}
