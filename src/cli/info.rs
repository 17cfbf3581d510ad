//! `imgblk info`: format, size and backing chain of an image, like `qemu-img info`.

use super::{human_size, open_for_reading, print_json, Escaped, ImageArgs, EXIT_OK};
use crate::error::Result;
use crate::image::qcow2::bitmap::{self, Bitmap};
use crate::image::qcow2::snapshot::{self, format_date, Snapshot};
use crate::image::status::walk_status;
use crate::image::ChainEntry;
use serde::Serialize;
use std::path::PathBuf;

/// Show an image's format, virtual size and backing chain.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgblk info disk.qcow2\n  imgblk info --json overlay.qcow2")]
pub struct InfoArgs {
    #[command(flatten)]
    image: ImageArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Info {
    image: PathBuf,
    format: crate::image::Format,
    virtual_size: u64,
    /// Guest bytes stored in each layer of the chain (index = depth).
    allocated: Vec<u64>,
    /// Guest bytes that read as zero because no file stores them.
    unallocated: u64,
    chain: Vec<ChainEntry>,
    /// Internal snapshots of the top file (qcow2).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    snapshots: Vec<Snapshot>,
    /// Persistent dirty bitmaps of the top file (qcow2).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bitmaps: Vec<Bitmap>,
    /// The disks of an OVA archive (`--disk N` picks the Nth), the one shown first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    disks: Vec<crate::image::ova::Member>,
}

/// Runs `imgblk info`.
pub fn run(args: InfoArgs) -> Result<i32> {
    let image = open_for_reading(&args.image)?;
    let chain = image.chain();
    let mut allocated = vec![0u64; chain.len().max(1)];
    let mut unallocated = 0;
    walk_status(&*image, 1 << 30, |run| {
        match (run.present, allocated.get_mut(run.depth as usize)) {
            (true, Some(bytes)) => *bytes += run.length,
            _ => unallocated += run.length,
        }
        Ok(())
    })?;
    let info = Info {
        image: args.image.image.clone(),
        format: image.format(),
        virtual_size: image.virtual_size(),
        allocated,
        unallocated,
        chain,
        snapshots: qcow2_extra(
            &args.image.image,
            image.format(),
            "internal snapshots",
            snapshot::list,
        ),
        bitmaps: qcow2_extra(
            &args.image.image,
            image.format(),
            "persistent bitmaps",
            bitmap::list,
        ),
        disks: crate::image::ova::list(&args.image.image)?,
    };
    if args.json {
        print_json(&info)?;
        return Ok(EXIT_OK);
    }
    println!("image: {}", Escaped(info.image.display()));
    for (number, disk) in info.disks.iter().enumerate() {
        let picked = args.image.disk.unwrap_or(1) as usize == number + 1;
        println!(
            "OVA disk {}: {} ({}){}",
            number + 1,
            Escaped(&disk.name),
            human_size(disk.size),
            if picked { ", shown below" } else { "" }
        );
    }
    println!("format: {}", info.format);
    println!(
        "virtual size: {} ({} bytes)",
        human_size(info.virtual_size),
        info.virtual_size
    );
    for (depth, entry) in info.chain.iter().enumerate() {
        let stored = info.allocated.get(depth).copied().unwrap_or(0);
        let role = if depth == 0 {
            "image".to_string()
        } else {
            format!("backing file [{depth}]")
        };
        println!(
            "{role}: {}{} ({}, virtual {}, file {}, holds {} of guest data)",
            Escaped(entry.path.display()),
            resolved(&entry.path, &entry.resolved),
            entry.format,
            human_size(entry.virtual_size),
            human_size(entry.file_size),
            human_size(stored)
        );
        for extent in &entry.extents {
            println!(
                "  extent: {}{} ({}, file {})",
                Escaped(extent.path.display()),
                resolved(&extent.path, &extent.resolved),
                if extent.flat { "flat" } else { "sparse" },
                human_size(extent.file_size)
            );
        }
    }
    println!(
        "unallocated (reads as zero): {}",
        human_size(info.unallocated)
    );
    if !info.snapshots.is_empty() {
        println!("snapshots:");
        let shown = |text: &str| Escaped(text).to_string();
        let id_width = info.snapshots.iter().map(|s| shown(&s.id).len()).max();
        let name_width = info.snapshots.iter().map(|s| shown(&s.name).len()).max();
        let (id_width, name_width) = (id_width.unwrap_or(0), name_width.unwrap_or(0));
        for s in &info.snapshots {
            println!(
                "  {:id_width$}  {:name_width$}  {}  disk {}  vm state {}",
                Escaped(&s.id),
                Escaped(&s.name),
                format_date(i64::from(s.date_sec)),
                human_size(s.disk_size),
                human_size(s.vm_state_size)
            );
        }
    }
    if !info.bitmaps.is_empty() {
        println!("bitmaps:");
        for b in &info.bitmaps {
            let flags = [(b.in_use, "in-use"), (b.auto, "auto")]
                .iter()
                .filter_map(|&(set, flag)| set.then_some(flag))
                .collect::<Vec<_>>()
                .join(",");
            println!(
                "  {}  granularity {}  flags [{flags}]",
                b.name,
                human_size(b.granularity)
            );
        }
    }
    Ok(EXIT_OK)
}

/// ` -> REAL`, where a path led to another one (a relative name, a symlink); else nothing.
fn resolved(path: &std::path::Path, real: &std::path::Path) -> String {
    match path == real {
        true => String::new(),
        false => format!(" -> {}", Escaped(real.display())),
    }
}

/// What `list` finds in a qcow2 file (its internal snapshots, its persistent bitmaps);
/// a damaged table is reported as a warning, since the image itself reads fine without
/// it. Nothing for other formats.
fn qcow2_extra<T>(
    path: &std::path::Path,
    format: crate::image::Format,
    what: &str,
    list: fn(&std::path::Path) -> Result<Vec<T>>,
) -> Vec<T> {
    if format != crate::image::Format::Qcow2 {
        return Vec::new();
    }
    list(path).unwrap_or_else(|e| {
        tracing::warn!("cannot list the {what}: {e}");
        Vec::new()
    })
}
