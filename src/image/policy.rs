//! Which host files an image may name: its backing files and parents, its external data
//! file, its extents. An image of unknown origin names what it likes (`/etc/shadow` as
//! its backing file), so the caller chooses how far to follow ([`NamePolicy`]), per call
//! or in the configuration file (`cli::config`).
//!
//! The check is made twice: on the path, resolved through its symlinks, before the file
//! is opened (so that a file outside is not even opened), and on the open descriptor
//! (`/proc/self/fd`), so that a symlink changed in between does not lead outside.

use crate::error::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};

/// How far backing files (and the parents of VHD, VHDX and VMDK differencing images) are
/// followed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    /// Any path, as QEMU does.
    #[default]
    Follow,
    /// Only files inside the directory tree of the image the user gave.
    Tree,
    /// No backing files at all: an image that has one is refused.
    None,
}

impl Backing {
    /// Every value, in the order help lists them.
    pub const ALL: [Backing; 3] = [Backing::Follow, Backing::Tree, Backing::None];

    /// The value's name, as options and the configuration file spell it.
    pub fn name(self) -> &'static str {
        match self {
            Backing::Follow => "follow",
            Backing::Tree => "tree",
            Backing::None => "none",
        }
    }
}

impl std::str::FromStr for Backing {
    type Err = Error;

    /// Parses a [`name`](Backing::name).
    fn from_str(name: &str) -> Result<Backing> {
        Backing::ALL
            .into_iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown backing policy `{name}` (follow, tree or none)"
                ))
            })
    }
}

/// Whether an image may name a block device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Devices {
    /// Only when the image the user gave is itself a block device (a qcow2 on an LV
    /// naming other LVs, as oVirt makes them).
    #[default]
    Auto,
    /// Always (a VMDK naming a raw disk, as VirtualBox makes them).
    Allow,
    /// Never.
    Deny,
}

/// What an image calls a file it names, for the policy and for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A qcow2 backing file.
    BackingFile,
    /// The parent of a VHD, VHDX or VMDK differencing image.
    Parent,
    /// A qcow2 external data file.
    DataFile,
    /// A VMDK extent, numbered from 1.
    Extent(usize),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::BackingFile => f.write_str("backing file"),
            Field::Parent => f.write_str("parent"),
            Field::DataFile => f.write_str("data file"),
            Field::Extent(n) => write!(f, "extent {n}"),
        }
    }
}

/// Which host files the images opened with it may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NamePolicy {
    /// How far backing files and parents are followed.
    pub backing: Backing,
    /// Whether a qcow2 may keep its data in an external data file.
    pub data_files: bool,
    /// Whether a named file may be a block device.
    pub devices: Devices,
    /// Whether extents and data files must lie inside the image's directory tree even
    /// when backing files are followed anywhere.
    pub contained: bool,
}

impl Default for NamePolicy {
    fn default() -> Self {
        NamePolicy::FOLLOW
    }
}

impl NamePolicy {
    /// The default, as QEMU does: names are followed anywhere, block devices only below
    /// an image that is one.
    pub const FOLLOW: NamePolicy = NamePolicy {
        backing: Backing::Follow,
        data_files: true,
        devices: Devices::Auto,
        contained: false,
    };

    /// For images of unknown origin (`--untrusted`): every file an image names must lie
    /// inside its directory tree, and be neither an external data file nor a device.
    pub const UNTRUSTED: NamePolicy = NamePolicy {
        backing: Backing::Tree,
        data_files: false,
        devices: Devices::Deny,
        contained: true,
    };

    /// Whether a file named by an image below `root` may be a block device.
    pub fn allows_device(self, root: &Root) -> bool {
        match self.devices {
            Devices::Auto => root.is_device,
            Devices::Allow => true,
            Devices::Deny => false,
        }
    }

    /// Whether a file named in `field` must lie inside the image's directory tree.
    fn must_be_contained(self, field: Field) -> bool {
        match field {
            Field::BackingFile | Field::Parent => self.backing != Backing::Follow,
            Field::DataFile | Field::Extent(_) => self.contained || self.backing != Backing::Follow,
        }
    }

    /// Checks, before it is opened, that `image` (below `root`) may name `path` in its
    /// `field`. The error names the image, the field, the path and the option that would
    /// allow it.
    pub fn check_name(self, root: &Root, image: &Path, field: Field, path: &Path) -> Result<()> {
        let refused = |why: String| {
            Error::unsupported(format!("its {field} {} is refused: {why}", path.display()))
                .with_path(image)
        };
        match field {
            Field::BackingFile | Field::Parent if self.backing == Backing::None => {
                return Err(refused(
                    "backing files are not followed (--backing-policy none); \
                     --backing-policy tree or follow allows them"
                        .into(),
                ))
            }
            Field::DataFile if !self.data_files => {
                return Err(refused(
                    "external data files are not allowed for images of unknown origin \
                     (--untrusted); without it they are"
                        .into(),
                ))
            }
            _ => {}
        }
        if !self.must_be_contained(field) {
            return Ok(());
        }
        // A file that does not exist is left to the open, which reports it as missing.
        match path.canonicalize() {
            Ok(real) => self.check_contained(&root.tree, image, field, path, &real),
            Err(_) => Ok(()),
        }
    }

    /// Checks, once it is open as `fd`, that the file `image` names in `field` (by
    /// `path`) is inside `root`'s tree: `/proc/self/fd` says which file was really opened.
    pub fn check_opened(
        self,
        root: &Root,
        image: &Path,
        field: Field,
        path: &Path,
        fd: std::os::fd::RawFd,
    ) -> Result<()> {
        if !self.must_be_contained(field) {
            return Ok(());
        }
        let real = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .or_else(|_| path.canonicalize())
            .map_err(|e| Error::io("cannot tell where it leads", e).with_path(path))?;
        self.check_contained(&root.tree, image, field, path, &real)
    }

    /// Refuses `real` (where `path` leads) unless it lies inside `tree`.
    fn check_contained(
        self,
        tree: &Path,
        image: &Path,
        field: Field,
        path: &Path,
        real: &Path,
    ) -> Result<()> {
        if real.starts_with(tree) {
            return Ok(());
        }
        let how = match (self.backing, field) {
            (Backing::Tree, Field::BackingFile | Field::Parent) if !self.contained => {
                "--backing-policy tree"
            }
            _ => "--untrusted",
        };
        let leads = match real == path {
            true => String::new(),
            false => format!(" (it leads to {})", real.display()),
        };
        Err(Error::unsupported(format!(
            "its {field} {}{leads} is refused: it lies outside {}, the directory of the \
             image given, and {how} allows only files inside it",
            path.display(),
            tree.display()
        ))
        .with_path(image))
    }
}

/// An image the user gave, which the files below it in its chain descend from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// Its directory, with symlinks resolved: the tree that `tree` and `--untrusted`
    /// hold named files to.
    pub tree: PathBuf,
    /// Whether it is a block device (see [`Devices::Auto`]).
    pub is_device: bool,
}

impl Root {
    /// The root that the image at `path` (a block device or not) is.
    pub fn of(path: &Path, is_device: bool) -> Root {
        let real = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let tree = real
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        Root { tree, is_device }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_tree_are_refused_where_the_policy_says() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().canonicalize().unwrap();
        let image = tree.join("top.qcow2");
        let root = Root::of(&image, false);
        let inside = tree.join("base.qcow2");
        std::fs::write(&inside, b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tree.join("link")).unwrap();
        let outside = Path::new("/etc/passwd");
        let follow = NamePolicy::FOLLOW;
        let tree_only = NamePolicy {
            backing: Backing::Tree,
            ..follow
        };
        let check = |policy: NamePolicy, field, path: &Path| {
            policy
                .check_name(&root, &image, field, path)
                .map_err(|e| e.to_string())
        };
        assert!(check(follow, Field::BackingFile, outside).is_ok());
        assert!(check(tree_only, Field::BackingFile, &inside).is_ok());
        let err = check(tree_only, Field::BackingFile, outside).unwrap_err();
        assert!(err.contains("backing file /etc/passwd") && err.contains("--backing-policy tree"));
        let err = check(tree_only, Field::Parent, &tree.join("link")).unwrap_err();
        assert!(err.contains("leads to /etc/passwd"), "{err}");
        let err = check(NamePolicy::UNTRUSTED, Field::DataFile, &inside).unwrap_err();
        assert!(
            err.contains("data file") && err.contains("--untrusted"),
            "{err}"
        );
        let err = check(NamePolicy::UNTRUSTED, Field::Extent(2), outside).unwrap_err();
        assert!(
            err.contains("extent 2") && err.contains("--untrusted"),
            "{err}"
        );
        let none = NamePolicy {
            backing: Backing::None,
            ..follow
        };
        let err = check(none, Field::BackingFile, &inside).unwrap_err();
        assert!(err.contains("--backing-policy none"), "{err}");
        assert!(check(none, Field::Extent(1), &inside).is_ok());
    }

    #[test]
    fn devices_follow_the_image_given() {
        let (device, file) = (
            Root::of(Path::new("/dev/x"), true),
            Root::of(Path::new("/x"), false),
        );
        assert!(NamePolicy::FOLLOW.allows_device(&device));
        assert!(!NamePolicy::FOLLOW.allows_device(&file));
        assert!(!NamePolicy::UNTRUSTED.allows_device(&device));
        let allow = NamePolicy {
            devices: Devices::Allow,
            ..NamePolicy::FOLLOW
        };
        assert!(allow.allows_device(&file));
    }
}
