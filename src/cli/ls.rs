//! `imgblk ls`: list files inside an image, without ublk or root (as `virt-ls`).

use super::files::{open_with_path, FsArgs};
use super::EXIT_OK;
use crate::error::{Error, Result};
use crate::files::escape::escape;
use crate::files::walk::{sorted, walk, Limits};
use crate::files::{Entry, Kind};
use crate::image::qcow2::snapshot::format_date;
use std::io::Write;
use std::path::{Path, PathBuf};

/// List a directory (or one file) inside an image's file system.
///
/// Reads the file system in process (ext2/3/4, FAT12/16/32, NTFS), so it needs no ublk and no
/// root: it works in containers and CI. xfs, btrfs and ISO 9660 are read through a
/// read-only kernel mount that it undoes again (as root, with ublk). Names with control characters are shown escaped
/// (`\n`, `\x1b`).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgblk ls guest.qcow2 --part 1 /etc\n  \
imgblk ls -l --auto guest.vmdk /home\n  imgblk ls -R --json --lv vg0/root disk.raw /var/log")]
pub struct LsArgs {
    /// The image(s), then the path inside the file system last.
    #[arg(required = true, value_name = "IMAGE... PATH")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    fs: FsArgs,
    /// Long listing: type and mode, link count, owner, group, size (a device's major,
    /// minor), modification time (as `ls -l`).
    #[arg(short, long)]
    long: bool,
    /// Everything below PATH, by full path.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Print a JSON array of entries (path, kind, size, mode, uid, gid, times, target,
    /// links, and file_id where the file system gives one).
    #[arg(long)]
    json: bool,
}

/// One listed file, for `--json`.
#[derive(serde::Serialize)]
struct Listed<'a> {
    path: String,
    #[serde(flatten)]
    entry: &'a Entry,
}

/// Runs `imgblk ls`.
pub fn run(args: LsArgs) -> Result<i32> {
    let (fs, path) = open_with_path(&args.fs, &args.paths)?;
    let mut listed: Vec<(PathBuf, Entry)> = Vec::new();
    let top = fs.metadata(path)?;
    if top.kind != Kind::Dir {
        listed.push((path.to_path_buf(), top));
    } else if args.recursive {
        walk(&*fs, path, Limits::default(), &mut |p, e| {
            if p != path {
                listed.push((p.to_path_buf(), e.clone()));
            }
            Ok(())
        })?;
    } else {
        for entry in sorted(fs.read_dir_of(path, &top)?) {
            listed.push((path.join(&entry.name), entry));
        }
    }
    if args.json {
        let json: Vec<Listed> = listed
            .iter()
            .map(|(p, entry)| Listed {
                path: p.to_string_lossy().into_owned(),
                entry,
            })
            .collect();
        return super::print_json(&json).map(|()| EXIT_OK);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (p, entry) in &listed {
        let shown: &Path = if args.recursive { p } else { &entry.name };
        let line = if args.long {
            long_line(shown, entry)
        } else {
            escape(shown)
        };
        writeln!(out, "{line}").map_err(|e| Error::io("writing stdout failed", e))?;
    }
    out.flush()
        .map_err(|e| Error::io("writing stdout failed", e))?;
    Ok(EXIT_OK)
}

/// One `ls -l` line.
fn long_line(name: &Path, entry: &Entry) -> String {
    let target = entry
        .target
        .as_deref()
        .map(|t| format!(" -> {}", escape(t)))
        .unwrap_or_default();
    let size = match entry.device {
        Some((major, minor)) => format!("{major}, {minor}"),
        None => entry.size.to_string(),
    };
    format!(
        "{} {:>3} {:>6} {:>6} {:>12} {} {}{target}",
        entry.mode_string(),
        entry.links,
        entry.uid,
        entry.gid,
        size,
        format_date(entry.mtime.secs),
        escape(name)
    )
}
