//! `imgblk info`: format, size and backing chain of an image, like `qemu-img info`.

use super::{human_size, open_for_reading, print_json, ImageArgs, EXIT_OK};
use crate::error::Result;
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
    chain: Vec<ChainEntry>,
}

/// Runs `imgblk info`.
pub fn run(args: InfoArgs) -> Result<i32> {
    let image = open_for_reading(&args.image)?;
    let info = Info {
        image: args.image.image.clone(),
        format: image.format(),
        virtual_size: image.virtual_size(),
        chain: image.chain(),
    };
    if args.json {
        print_json(&info)?;
        return Ok(EXIT_OK);
    }
    println!("image: {}", info.image.display());
    println!("format: {}", info.format);
    println!(
        "virtual size: {} ({} bytes)",
        human_size(info.virtual_size),
        info.virtual_size
    );
    for (depth, entry) in info.chain.iter().enumerate().skip(1) {
        println!(
            "backing file [{depth}]: {} ({}, {})",
            entry.path.display(),
            entry.format,
            human_size(entry.virtual_size)
        );
    }
    Ok(EXIT_OK)
}
