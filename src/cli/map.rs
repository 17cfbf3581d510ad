//! `imgblk map`: which guest ranges hold data, read as zero, or come from a backing file.

use super::changes::ChangeArgs;
use super::{open_source_for_reading, print_json, SourceArgs, EXIT_OK};
use crate::error::Result;
use crate::image::status::walk_status;

/// Show the allocation map of an image, like `qemu-img map`.
///
/// Each run says where it starts, how long it is, which image of the backing chain supplies
/// it (depth), and whether it holds data or reads as zero. Backup tools use it to copy only
/// what is allocated. --top-layers, --since and --bitmap list only the runs that changed
/// since a previous backup (an incremental backup's ranges).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  imgblk map disk.qcow2\n  imgblk map --json disk.qcow2 | jq '[.[] | select(.data)] | length'\n  \
imgblk map --top-layers 1 overlay.qcow2\n  imgblk map --bitmap b0 disk.qcow2\n  \
imgblk map --part 3 --luks --key-file key disk.qcow2   # the LUKS volume's decrypted data"
)]
pub struct MapArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    luks: super::luks::LuksArgs,
    /// Print JSON (the shape of `qemu-img map --output=json`).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    changes: ChangeArgs,
}

/// Runs `imgblk map`.
pub fn run(args: MapArgs) -> Result<i32> {
    args.changes.check(&args.source)?;
    let image = open_source_for_reading(&args.source, &args.luks)?;
    let changes = args.changes.resolve(&*image, &args.source)?;
    let mut entries = Vec::new();
    walk_status(&*image, 1 << 30, |entry| {
        entries.extend(changes.select(entry));
        Ok(())
    })?;
    if args.json {
        print_json(&entries)?;
        return Ok(EXIT_OK);
    }
    println!(
        "{:<18} {:<18} {:>5}  {:<6} OFFSET",
        "START", "LENGTH", "DEPTH", "KIND"
    );
    for e in entries {
        let kind = match (e.data, e.compressed, e.present) {
            (true, true, _) => "comp",
            (true, false, _) => "data",
            (false, _, true) => "zero",
            (false, _, false) => "hole",
        };
        let offset = e.offset.map(|o| format!("{o:#x}")).unwrap_or_default();
        println!(
            "{:<#18x} {:<#18x} {:>5}  {:<6} {offset}",
            e.start, e.length, e.depth, kind
        );
    }
    Ok(EXIT_OK)
}
