//! A file system the kernel mounted (xfs, btrfs: no crate reads them in process), read
//! as a [`FileSystem`] below its mount point.
//!
//! The tree belongs to an image of unknown origin, so no path is ever resolved by the
//! host's own rules: every lookup is an `openat2(RESOLVE_IN_ROOT)` under the mount point,
//! which resolves `..` and symbolic links (`/etc -> /`) as if the mount point were `/`,
//! never into the host's files; the last component is `lstat`ed, not followed, and
//! magic links (`/proc/self/...`) are refused.

use super::{Entry, FileSystem, Kind};
use crate::error::{Error, ErrorKind, Result};
use crate::files::entry::Time;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The tree below a mount point, read with the host kernel's driver.
pub struct MountedFs {
    root: OwnedFd,
    kind: &'static str,
    name: String,
    /// Dropped after `root` is closed (fields drop in order): what unmounts the tree.
    _mount: Option<Box<dyn Send>>,
}

impl MountedFs {
    /// Reads the file system of type `kind` (`xfs`) mounted at `mountpoint`; `name` (the
    /// image and piece) is what errors say it is. `mount`, if given, is dropped once the
    /// tree is closed: a guard that unmounts it.
    pub fn new(
        mountpoint: &Path,
        kind: &'static str,
        name: String,
        mount: Option<Box<dyn Send>>,
    ) -> Result<MountedFs> {
        let path = CString::new(mountpoint.as_os_str().as_bytes())
            .map_err(|_| Error::invalid("mount point path holds a NUL byte"))?;
        // SAFETY: `path` is NUL-terminated; the descriptor returned is owned below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Error::io(
                "cannot open the mount point",
                std::io::Error::last_os_error(),
            )
            .with_path(mountpoint));
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(MountedFs {
            root,
            kind,
            name,
            _mount: mount,
        })
    }

    /// Opens `path` (absolute inside the file system) with `flags`, resolved inside it.
    fn open_in_root(&self, path: &Path, flags: i32) -> Result<OwnedFd> {
        let relative = relative(path);
        let c_path = CString::new(relative.as_os_str().as_bytes())
            .map_err(|_| Error::invalid("path holds a NUL byte"))?;
        // SAFETY: open_how is plain data; zero is "no flags" for every field.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: `c_path` is NUL-terminated and `how` a valid open_how of the size given;
        // the descriptor returned is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c_path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(self.error(path, std::io::Error::last_os_error()));
        }
        // SAFETY: a non-negative result of openat2 is a new descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// The entry `name` of the directory open as `dir`, not following a symbolic link.
    fn entry_at(&self, dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<Entry> {
        let c_name = CString::new(name.as_bytes())
            .map_err(|_| Error::invalid("file name holds a NUL byte"))?;
        // SAFETY: `stat` is plain data that fstatat fills in.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH;
        // SAFETY: `dir` is an open descriptor and `c_name` NUL-terminated.
        if unsafe { libc::fstatat(dir.as_raw_fd(), c_name.as_ptr(), &mut st, flags) } < 0 {
            return Err(self.error(shown, std::io::Error::last_os_error()));
        }
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            _ => Kind::File,
        };
        let target = match kind {
            Kind::Symlink => Some(self.read_link(dir, &c_name, shown)?),
            _ => None,
        };
        Ok(Entry {
            name: PathBuf::from(name),
            kind,
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: Time {
                secs: st.st_mtime,
                nanos: st.st_mtime_nsec as u32,
            },
            atime: Time {
                secs: st.st_atime,
                nanos: st.st_atime_nsec as u32,
            },
            target,
            file_id: Some(st.st_ino),
            links: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
            device: matches!(kind, Kind::CharDev | Kind::BlockDev)
                .then(|| (libc::major(st.st_rdev), libc::minor(st.st_rdev))),
        })
    }

    /// The target of symbolic link `name` in `dir`.
    fn read_link(&self, dir: &OwnedFd, name: &CString, shown: &Path) -> Result<PathBuf> {
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: `buf` has room for the length passed; `name` is NUL-terminated.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(self.error(shown, std::io::Error::last_os_error()));
        }
        buf.truncate(n as usize);
        Ok(PathBuf::from(OsStr::from_bytes(&buf)))
    }

    /// An error about `path` of this file system, naming the image.
    fn error(&self, path: &Path, e: std::io::Error) -> Error {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            _ => ErrorKind::Io,
        };
        super::path_error(kind, &self.name, path, &e.to_string())
    }
}

impl FileSystem for MountedFs {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn metadata(&self, path: &Path) -> Result<Entry> {
        match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => {
                let dir = self.open_in_root(parent, libc::O_PATH | libc::O_DIRECTORY)?;
                self.entry_at(&dir, name, path)
            }
            // The root itself.
            _ => self.entry_at(&self.root, OsStr::new(""), path),
        }
    }

    fn read_dir(&self, path: &Path) -> Result<Vec<Entry>> {
        let dir = self.open_in_root(path, libc::O_RDONLY | libc::O_DIRECTORY)?;
        // The open directory itself, through its descriptor: no path is resolved again.
        let listed = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .map_err(|e| self.error(path, e))?;
        let mut entries = Vec::new();
        for item in listed {
            let item = item.map_err(|e| self.error(path, e))?;
            let name = item.file_name();
            entries.push(self.entry_at(&dir, &name, &path.join(&name))?);
        }
        Ok(entries)
    }

    fn open_file<'a>(&'a self, path: &Path) -> Result<Box<dyn Read + 'a>> {
        let fd = self.open_in_root(path, libc::O_RDONLY | libc::O_NOFOLLOW)?;
        Ok(Box::new(File::from(fd)))
    }
}

/// `path` relative to the root of the file system (`.` for the root itself).
fn relative(path: &Path) -> PathBuf {
    let rest: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect();
    match rest.as_os_str().is_empty() {
        true => PathBuf::from("."),
        false => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree whose links point at the host's `/` and out with `..`: every lookup stays
    /// below the root, as it would inside the image.
    #[test]
    fn links_and_dotdot_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), b"guest\n").unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("etc/out")).unwrap();
        std::fs::write(dir.path().join("secret"), b"host\n").unwrap();
        let fs = MountedFs::new(&root, "xfs", "test.img".into(), None).unwrap();

        let mut read = String::new();
        fs.open_file(Path::new("/up/etc/hostname"))
            .unwrap()
            .read_to_string(&mut read)
            .unwrap();
        assert_eq!(read, "guest\n", "/up led outside the root");
        let err = fs.open_file(Path::new("/etc/out/secret")).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let err = fs.metadata(Path::new("/../secret")).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

        let up = fs.metadata(Path::new("/up")).unwrap();
        assert_eq!(
            (up.kind, up.target.as_deref()),
            (Kind::Symlink, Some(Path::new("/")))
        );
        let err = fs.open_file(Path::new("/up")).err().unwrap();
        assert!(err.to_string().contains("test.img: /up"), "{err}");
        let mut names: Vec<_> = fs
            .read_dir(Path::new("/up"))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        names.sort();
        assert_eq!(names, [PathBuf::from("etc"), PathBuf::from("up")]);
        assert_eq!(fs.metadata(Path::new("/")).unwrap().kind, Kind::Dir);
    }
}
