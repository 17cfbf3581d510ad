//! `imgblk inspect`: what is inside images — partitions, LVM, file systems — like `lsblk`.

use super::{human_size, print_json, Escaped, EXIT_OK};
use crate::error::Result;
use crate::image::{open_image, DiskImage};
use crate::layout::Node;
use std::path::PathBuf;
use std::sync::Arc;

/// Show partitions, LVM volume groups and file systems inside images, without ublk.
///
/// Give all the disks of one machine to see a VG that spans them. Names in the first
/// column are what `--part` and `--lv` take: disk0p2 is `--part 2`, vg0/root is
/// `--lv vg0/root`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  imgblk inspect guest.qcow2\n  imgblk inspect --json disk1.raw disk2.raw\n  \
imgblk inspect --untrusted customer.qcow2   # it may name no file outside its folder"
)]
pub struct InspectArgs {
    /// The images (or block devices).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    read: super::ReadArgs,
    /// Print JSON instead of a tree.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    luks: super::luks::KeyFileArgs,
}

/// Runs `imgblk inspect`.
pub fn run(args: InspectArgs) -> Result<i32> {
    let options = args.read.open_options()?;
    let mut images: Vec<Arc<dyn DiskImage>> = Vec::new();
    for path in &args.images {
        images.push(Arc::from(open_image(path, &options)?));
    }
    let layout = crate::serve::discover_with(&images, args.luks.key().as_ref())?;
    if args.json {
        print_json(&layout)?;
        return Ok(EXIT_OK);
    }
    println!(
        "{:<22} {:<10} {:>12} {:>10}  {:<12} {:<16} UUID",
        "NAME", "KIND", "OFFSET", "SIZE", "TYPE", "LABEL"
    );
    for (i, disk) in layout.disks.iter().enumerate() {
        match args.images.get(i) {
            Some(path) => println!("# {}: {}", disk.name, Escaped(path.display())),
            None => println!("# {}: decrypted", disk.name),
        }
        print_node(disk, "", true, true);
    }
    for vg in &layout.volume_groups {
        let pvs: Vec<String> = vg
            .pvs
            .iter()
            .map(|pv| {
                pv.device
                    .clone()
                    .unwrap_or_else(|| format!("missing {}", pv.uuid))
            })
            .collect();
        println!(
            "# volume group {} (seqno {}, PVs: {})",
            Escaped(&vg.name),
            vg.seqno,
            Escaped(pvs.join(", "))
        );
        for warning in &vg.warnings {
            println!("  warning: {}", Escaped(warning));
        }
        for (i, lv) in vg.lvs.iter().enumerate() {
            print_node(lv, "", i + 1 == vg.lvs.len(), false);
        }
    }
    for warning in &layout.warnings {
        println!("warning: {}", Escaped(warning));
    }
    Ok(EXIT_OK)
}

fn print_node(node: &Node, indent: &str, last: bool, root: bool) {
    let branch = if root {
        ""
    } else if last {
        "└─"
    } else {
        "├─"
    };
    let kind = serde_json::to_value(node.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let content = node
        .content
        .as_ref()
        .and_then(|c| serde_json::to_value(c.kind).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .or_else(|| {
            node.table
                .as_ref()
                .map(|t| format!("{:?}", t.kind).to_lowercase())
        })
        .unwrap_or_default();
    let content = match &node.vg {
        Some(vg) => format!("{content} ({vg})"),
        None => content,
    };
    println!(
        "{:<22} {:<10} {:>12} {:>10}  {:<12} {:<16} {}",
        format!("{indent}{branch}{}", Escaped(&node.name)),
        kind,
        node.offset,
        human_size(node.size),
        Escaped(content),
        Escaped(node.label().unwrap_or("")),
        Escaped(node.uuid().unwrap_or(""))
    );
    let pad = if root {
        ""
    } else if last {
        "  "
    } else {
        "│ "
    };
    let child_indent = format!("{indent}{pad}");
    for warning in node.warnings.iter().chain(&node.error) {
        println!("{child_indent}  ! {}", Escaped(warning));
    }
    for (i, child) in node.children.iter().enumerate() {
        print_node(child, &child_indent, i + 1 == node.children.len(), false);
    }
}
