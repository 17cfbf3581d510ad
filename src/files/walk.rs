//! Walking a tree of a [`FileSystem`], bounded: a directory loop (a hostile file system's
//! directory entry pointing back at an ancestor) ends in an error as soon as a directory
//! is its own ancestor by file number (when the reader gives numbers), and in any case,
//! as does an absurdly large tree, once the depth or the number of entries passes a
//! limit, never in a hang or unbounded memory.

use super::{Entry, FileSystem, Kind};
use crate::error::{Error, Result};
use std::path::Path;

/// How far a walk may go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest directory nesting below the start (Linux's own PATH_MAX of 4096 bytes
    /// allows at most 2048 levels; real trees stay far below 256).
    pub max_depth: usize,
    /// Most entries visited in all.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 256,
            max_entries: 50_000_000,
        }
    }
}

/// Visits `root` and, when it is a directory, everything below it, depth first and in
/// name order (a directory before its contents); `visit` gets each file's absolute path
/// and entry. Symbolic links are visited, never followed.
pub fn walk(
    fs: &dyn FileSystem,
    root: &Path,
    limits: Limits,
    visit: &mut dyn FnMut(&Path, &Entry) -> Result<()>,
) -> Result<()> {
    let entry = fs.metadata(root)?;
    let mut walker = Walker {
        fs,
        limits,
        seen: 0,
        visit,
        ancestors: Vec::new(),
    };
    walker.visit(root, &entry, 0)
}

struct Walker<'a> {
    fs: &'a dyn FileSystem,
    limits: Limits,
    seen: u64,
    visit: &'a mut dyn FnMut(&Path, &Entry) -> Result<()>,
    /// The file numbers of the directories above the one being visited, where the
    /// reader gives them: a directory that is its own ancestor is a loop.
    ancestors: Vec<u64>,
}

impl Walker<'_> {
    fn visit(&mut self, path: &Path, entry: &Entry, depth: usize) -> Result<()> {
        self.seen += 1;
        if self.seen > self.limits.max_entries {
            return Err(Error::corrupt(format!(
                "more than {} files below the start of the walk; stopped at {}",
                self.limits.max_entries,
                super::escape::escape(path)
            )));
        }
        (self.visit)(path, entry)?;
        if entry.kind != Kind::Dir {
            return Ok(());
        }
        if depth >= self.limits.max_depth {
            return Err(Error::corrupt(format!(
                "directories nested more than {} deep at {}: a directory loop?",
                self.limits.max_depth,
                super::escape::escape(path)
            )));
        }
        if let Some(id) = entry.file_id {
            if self.ancestors.contains(&id) {
                return Err(Error::corrupt(format!(
                    "directory {} is its own ancestor (file number {id}): a directory loop",
                    super::escape::escape(path)
                )));
            }
            self.ancestors.push(id);
        }
        let children = self.fs.read_dir_of(path, entry);
        let result = children.and_then(|children| {
            for child in sorted(children) {
                self.visit(&path.join(&child.name), &child, depth + 1)?;
            }
            Ok(())
        });
        if entry.file_id.is_some() {
            self.ancestors.pop();
        }
        result
    }
}

/// `entries` in name order (byte order, as `LC_ALL=C ls`).
pub fn sorted(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::entry::Time;
    use std::path::PathBuf;

    /// A hostile file system whose every directory holds itself twice (`a`, `b`).
    struct Loop;

    fn dir(name: &str) -> Entry {
        let t = Time { secs: 0, nanos: 0 };
        Entry {
            name: name.into(),
            kind: Kind::Dir,
            size: 0,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: t,
            atime: t,
            target: None,
            file_id: None,
            links: 1,
            device: None,
        }
    }

    impl FileSystem for Loop {
        fn kind(&self) -> &'static str {
            "loop"
        }
        fn metadata(&self, _: &Path) -> Result<Entry> {
            Ok(dir("/"))
        }
        fn read_dir(&self, _: &Path) -> Result<Vec<Entry>> {
            Ok(vec![dir("b"), dir("a")])
        }
        fn open_file<'a>(&'a self, _: &Path) -> Result<Box<dyn std::io::Read + 'a>> {
            Err(Error::invalid("no files"))
        }
    }

    #[test]
    fn a_directory_loop_ends_at_the_depth_limit() {
        let limits = Limits {
            max_depth: 5,
            max_entries: 1000,
        };
        let mut paths: Vec<PathBuf> = Vec::new();
        let err = walk(&Loop, Path::new("/"), limits, &mut |p, _| {
            paths.push(p.to_path_buf());
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("nested more than 5 deep"), "{err}");
        // Depth first, in name order.
        assert_eq!(paths[1], Path::new("/a"));
        assert_eq!(paths[5], Path::new("/a/a/a/a/a"));
    }

    /// [`Loop`] whose directories carry their file number, all the same one.
    struct NumberedLoop;

    impl FileSystem for NumberedLoop {
        fn kind(&self) -> &'static str {
            "loop"
        }
        fn metadata(&self, _: &Path) -> Result<Entry> {
            Ok(Entry {
                file_id: Some(2),
                ..dir("/")
            })
        }
        fn read_dir(&self, _: &Path) -> Result<Vec<Entry>> {
            Ok(vec![Entry {
                file_id: Some(2),
                ..dir("a")
            }])
        }
        fn open_file<'a>(&'a self, _: &Path) -> Result<Box<dyn std::io::Read + 'a>> {
            Err(Error::invalid("no files"))
        }
    }

    #[test]
    fn a_directory_that_is_its_own_ancestor_is_a_loop() {
        let mut seen = 0;
        let err = walk(
            &NumberedLoop,
            Path::new("/"),
            Limits::default(),
            &mut |_, _| {
                seen += 1;
                Ok(())
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("/a is its own ancestor"), "{err}");
        assert_eq!(seen, 2);
    }

    #[test]
    fn a_wide_loop_ends_at_the_entry_limit() {
        let limits = Limits {
            max_depth: 64,
            max_entries: 40,
        };
        let mut seen = 0;
        let err = walk(&Loop, Path::new("/"), limits, &mut |_, _| {
            seen += 1;
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("more than 40 files"), "{err}");
        assert_eq!(seen, 40);
    }
}
