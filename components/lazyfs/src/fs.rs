//! The FUSE side: every operation passes through to the backing directory at once, and
//! every change to file data is recorded in the undo log first, so that a power loss
//! can take back whatever was not fsynced. Directory operations (create, rename,
//! unlink, mkdir) are durable at once, as in Jepsen's lazyfs.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs::{File, Metadata, OpenOptions},
    io,
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use crate::{inodes::Inodes, undo::UndoLog};

/// How long the kernel may cache names and attributes: every change passes through
/// here, so the cache never goes stale while mounted.
const TTL: Duration = Duration::from_secs(1);

/// What the filesystem knows, shared with the handle that simulates power loss.
#[derive(Debug)]
pub struct State {
    pub inodes: Inodes,
    pub undo: UndoLog,
    files: HashMap<u64, (Arc<File>, u64)>,
    next_fh: u64,
}

impl State {
    pub fn new(root: &Path) -> io::Result<State> {
        Ok(State {
            inodes: Inodes::new(std::fs::metadata(root)?.ino()),
            undo: UndoLog::default(),
            files: HashMap::new(),
            next_fh: 1,
        })
    }
}

/// The mounted filesystem.
pub struct LazyFsOps {
    pub root: PathBuf,
    pub state: Arc<Mutex<State>>,
}

type Res<T> = Result<T, Errno>;

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn kind(m: &Metadata) -> FileType {
    let t = m.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn attr(ino: u64, m: &Metadata) -> FileAttr {
    let at = |secs: i64, nsecs: i64| UNIX_EPOCH + Duration::new(secs.max(0) as u64, nsecs as u32);
    FileAttr {
        ino: INodeNo(ino),
        size: m.len(),
        blocks: m.blocks(),
        atime: at(m.atime(), m.atime_nsec()),
        mtime: at(m.mtime(), m.mtime_nsec()),
        ctime: at(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind(m),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

impl LazyFsOps {
    fn full(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn rel(&self, ino: INodeNo) -> Res<PathBuf> {
        let s = self.state.lock();
        s.inodes
            .path(ino.0)
            .map(Path::to_path_buf)
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Res<PathBuf> {
        Ok(self.rel(parent)?.join(name))
    }

    /// Stats `rel` and gives it a FUSE inode.
    fn entry(&self, rel: PathBuf) -> Res<FileAttr> {
        let m = std::fs::symlink_metadata(self.full(&rel)).map_err(errno)?;
        let ino = self.state.lock().inodes.remember(rel, m.ino());
        Ok(attr(ino, &m))
    }

    fn file(&self, fh: FileHandle) -> Res<(Arc<File>, u64)> {
        self.state
            .lock()
            .files
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn add_handle(&self, file: File, backing: u64) -> u64 {
        let mut s = self.state.lock();
        let fh = s.next_fh;
        s.next_fh += 1;
        s.files.insert(fh, (Arc::new(file), backing));
        fh
    }

    fn truncate(&self, ino: INodeNo, fh: Option<FileHandle>, size: u64) -> Res<()> {
        let file = match fh {
            Some(fh) => self.file(fh)?.0,
            None => Arc::new(
                OpenOptions::new()
                    .read(true) // the undo log reads what the cut removes
                    .write(true)
                    .open(self.full(&self.rel(ino)?))
                    .map_err(errno)?,
            ),
        };
        let backing = file.metadata().map_err(errno)?.ino();
        let mut s = self.state.lock();
        s.undo
            .before_truncate(backing, &file, size)
            .map_err(errno)?;
        file.set_len(size).map_err(errno)
    }

    fn set_times(&self, rel: &Path, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> Res<()> {
        let to_timespec = |t: Option<TimeOrNow>| match t {
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            Some(TimeOrNow::Now) => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            Some(TimeOrNow::SpecificTime(t)) => {
                let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                libc::timespec {
                    tv_sec: d.as_secs() as i64,
                    tv_nsec: d.subsec_nanos() as i64,
                }
            }
        };
        let times = [to_timespec(atime), to_timespec(mtime)];
        let path = std::ffi::CString::new(self.full(rel).into_os_string().into_encoded_bytes())
            .map_err(|_| Errno::EINVAL)?;
        // SAFETY: a valid C string and a two-element timespec array, as utimensat needs.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(errno(io::Error::last_os_error()))
        }
    }

    fn open_options(flags: i32) -> OpenOptions {
        let mut o = OpenOptions::new();
        // A writer's backing file is opened for reading too: the undo log reads the synced
        // bytes a write is about to replace. (The kernel has already checked the mode.)
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY | libc::O_RDWR => o.read(true).write(true),
            _ => o.read(true),
        };
        // The kernel has already applied O_APPEND to the offsets it sends.
        o.custom_flags(
            flags
                & !(libc::O_ACCMODE
                    | libc::O_APPEND
                    | libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_TRUNC),
        );
        o
    }
}

/// Replies with the result of `f`.
macro_rules! reply {
    ($reply:expr, $f:expr, |$v:ident| $ok:expr) => {
        match $f {
            Ok($v) => $ok,
            Err(e) => $reply.error(e),
        }
    };
}

impl Filesystem for LazyFsOps {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply!(
            reply,
            self.child(parent, name).and_then(|p| self.entry(p)),
            |a| reply.entry(&TTL, &a, Generation(0))
        )
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply!(reply, self.rel(ino).and_then(|p| self.entry(p)), |a| reply
            .attr(&TTL, &a))
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let res = (|| {
            let rel = self.rel(ino)?;
            if let Some(size) = size {
                self.truncate(ino, fh, size)?;
            }
            if let Some(mode) = mode {
                std::fs::set_permissions(self.full(&rel), std::fs::Permissions::from_mode(mode))
                    .map_err(errno)?;
            }
            if atime.is_some() || mtime.is_some() {
                self.set_times(&rel, atime, mtime)?;
            }
            self.entry(rel)
        })();
        reply!(reply, res, |a| reply.attr(&TTL, &a))
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let res = self.child(parent, name).and_then(|rel| {
            std::fs::create_dir(self.full(&rel)).map_err(errno)?;
            std::fs::set_permissions(self.full(&rel), std::fs::Permissions::from_mode(mode))
                .map_err(errno)?;
            self.entry(rel)
        });
        reply!(reply, res, |a| reply.entry(&TTL, &a, Generation(0)))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let res = self.child(parent, name).and_then(|rel| {
            let full = self.full(&rel);
            let m = std::fs::symlink_metadata(&full).map_err(errno)?;
            std::fs::remove_file(&full).map_err(errno)?;
            if m.nlink() <= 1 {
                let mut s = self.state.lock();
                s.undo.removed(m.ino());
                s.inodes.forget_backing(m.ino());
            }
            Ok(())
        });
        reply!(reply, res, |_v| reply.ok())
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let res = self.child(parent, name).and_then(|rel| {
            let full = self.full(&rel);
            let ino = std::fs::symlink_metadata(&full).map_err(errno)?.ino();
            std::fs::remove_dir(&full).map_err(errno)?;
            self.state.lock().inodes.forget_backing(ino);
            Ok(())
        });
        reply!(reply, res, |_v| reply.ok())
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let res = (|| {
            if !flags.is_empty() {
                return Err(Errno::EINVAL);
            }
            let (from, to) = (self.child(parent, name)?, self.child(newparent, newname)?);
            let replaced = std::fs::symlink_metadata(self.full(&to)).ok();
            std::fs::rename(self.full(&from), self.full(&to)).map_err(errno)?;
            let mut s = self.state.lock();
            if let Some(m) = replaced.filter(|m| m.nlink() <= 1 && !m.is_dir()) {
                s.undo.removed(m.ino());
                s.inodes.forget_backing(m.ino());
            }
            s.inodes.renamed(&from, &to);
            Ok(())
        })();
        reply!(reply, res, |_v| reply.ok())
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let res = (|| {
            let (from, to) = (self.rel(ino)?, self.child(newparent, newname)?);
            std::fs::hard_link(self.full(&from), self.full(&to)).map_err(errno)?;
            // The inode now goes by its newest name, so that linking a file in and
            // unlinking its old name (how files are moved into place) keeps it reachable.
            let m = std::fs::symlink_metadata(self.full(&to)).map_err(errno)?;
            self.state.lock().inodes.remember(to, m.ino());
            Ok(attr(ino.0, &m))
        })();
        reply!(reply, res, |a| reply.entry(&TTL, &a, Generation(0)))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let res = (|| {
            let rel = self.rel(ino)?;
            let file = Self::open_options(flags.0)
                .open(self.full(&rel))
                .map_err(errno)?;
            let backing = file.metadata().map_err(errno)?.ino();
            if flags.0 & libc::O_TRUNC != 0 {
                self.state
                    .lock()
                    .undo
                    .before_truncate(backing, &file, 0)
                    .map_err(errno)?;
                file.set_len(0).map_err(errno)?;
            }
            Ok(self.add_handle(file, backing))
        })();
        reply!(reply, res, |fh| reply
            .opened(FileHandle(fh), FopenFlags::empty()))
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let res = (|| {
            let rel = self.child(parent, name)?;
            let full = self.full(&rel);
            let existed = full.exists();
            let mut o = Self::open_options(flags);
            o.create(true).mode(mode);
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            }
            if flags & libc::O_ACCMODE == libc::O_RDONLY {
                o.write(true);
            }
            let file = o.open(&full).map_err(errno)?;
            let m = file.metadata().map_err(errno)?;
            if existed {
                if flags & libc::O_TRUNC != 0 {
                    self.state
                        .lock()
                        .undo
                        .before_truncate(m.ino(), &file, 0)
                        .map_err(errno)?;
                    file.set_len(0).map_err(errno)?;
                }
            } else {
                self.state.lock().undo.created(m.ino());
            }
            let a = self.entry(rel)?;
            Ok((a, self.add_handle(file, m.ino())))
        })();
        reply!(reply, res, |v| reply.created(
            &TTL,
            &v.0,
            Generation(0),
            FileHandle(v.1),
            FopenFlags::empty()
        ))
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let res = self.file(fh).and_then(|(f, _)| {
            let mut buf = vec![0; size as usize];
            let mut n = 0;
            while n < buf.len() {
                match f.read_at(&mut buf[n..], offset + n as u64) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(n);
            Ok(buf)
        });
        reply!(reply, res, |b| reply.data(&b))
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let res = self.file(fh).and_then(|(f, backing)| {
            // Held across the write so that an fsync cannot slip in between.
            let mut s = self.state.lock();
            s.undo
                .before_write(backing, &f, offset, data.len() as u64)
                .map_err(errno)?;
            f.write_all_at(data, offset).map_err(errno)?;
            Ok(data.len() as u32)
        });
        reply!(reply, res, |n| reply.written(n))
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state.lock().files.remove(&fh.0);
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let res = self
            .file(fh)
            .map(|(_, backing)| self.state.lock().undo.synced(backing));
        reply!(reply, res, |_v| reply.ok())
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let res = (|| {
            let rel = self.rel(ino)?;
            let mut names: Vec<_> = std::fs::read_dir(self.full(&rel))
                .map_err(errno)?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            names.sort();
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            for name in names {
                // A file removed meanwhile is simply left out.
                if let Ok(a) = self.entry(rel.join(&name)) {
                    entries.push((a.ino.0, a.kind, name));
                }
            }
            Ok(entries)
        })();
        match res {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(ino), i as u64 + 1, kind, &name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match fs_stats(&self.root) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok()
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let res = self.file(fh).and_then(|(f, backing)| {
            use std::os::fd::AsRawFd;
            // Punching a hole or zeroing a range changes synced bytes like a write does;
            // growing the file is a change like an append.
            self.state
                .lock()
                .undo
                .before_write(backing, &f, offset, length)
                .map_err(errno)?;
            // SAFETY: a valid open descriptor; fallocate reads no memory of ours.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, length as i64) };
            if rc == 0 {
                Ok(())
            } else {
                Err(errno(io::Error::last_os_error()))
            }
        });
        reply!(reply, res, |_v| reply.ok())
    }
}

fn fs_stats(path: &Path) -> io::Result<libc::statvfs> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid C string and a pointer to a statvfs for the kernel to fill.
    if unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) } == 0 {
        // SAFETY: statvfs returned 0, so it filled the struct.
        Ok(unsafe { s.assume_init() })
    } else {
        Err(io::Error::last_os_error())
    }
}
