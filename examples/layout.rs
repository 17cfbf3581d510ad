//! Prints what `imgblk::layout::discover` finds in the images given, as JSON.
//!
//! `cargo run --example layout -- disk.img [more.img ...]`

use imgblk::image::{open_image, DiskImage, OpenOptions};
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let mut images: Vec<Arc<dyn DiskImage>> = Vec::new();
    let options = OpenOptions::default();
    for path in std::env::args_os().skip(1) {
        images.push(Arc::from(open_image(path.as_ref(), &options)?));
    }
    let layout = imgblk::layout::discover(&images);
    println!("{}", serde_json::to_string_pretty(&layout)?);
    Ok(())
}
