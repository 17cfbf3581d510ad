//! What a backup agent needs from imgblk's library, without ublk or root: open an image of
//! any format, list the pieces inside it, walk the allocated extents of one piece, and read
//! only those — holes are skipped, not read.
//!
//! `cargo run --example backup_agent -- guest.qcow2 [PIECE]`
//!
//! PIECE is a name from `imgblk inspect` (`disk0p2`, `vg0/root`); without it the whole
//! disk is copied. The data is written to `backup.raw` (sparse) in the current directory.

use imgblk::image::{io::read_at, open_image, status::walk_status, DiskImage, OpenOptions};
use imgblk::layout::discover;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: backup_agent IMAGE [PIECE]"))?;
    let piece = args.next();

    // 1. Open (read-only, with QEMU-compatible shared locks: a running VM that writes the
    //    image makes this fail instead of producing a torn backup).
    let disk: Arc<dyn DiskImage> = Arc::from(open_image(path.as_ref(), &OpenOptions::default())?);

    // 2. List the pieces: partitions, LVM logical volumes, their file systems.
    let layout = discover(std::slice::from_ref(&disk));
    for node in layout.nodes() {
        let content = node.content.as_ref().map_or("-", |c| c.kind.as_str());
        println!("{:<16} {:>12} bytes  {content}", node.name, node.size);
    }

    // 3. Pick what to back up: a piece is a DiskImage of its own.
    let source: Arc<dyn DiskImage> = match &piece {
        Some(name) => layout
            .find(name)
            .ok_or_else(|| anyhow::anyhow!("no piece {name}"))?
            .image()?,
        None => disk,
    };

    // 4. Walk the allocation map and copy only runs that hold data.
    let out = std::fs::File::create("backup.raw")?;
    out.set_len(source.virtual_size())?;
    let mut buf = vec![0u8; 4 << 20];
    let mut copied = 0u64;
    walk_status(&*source, 1 << 30, |run| {
        if !run.data {
            return Ok(()); // zero or unallocated: a hole in the output
        }
        let mut pos = run.start;
        while pos < run.start + run.length {
            let n = (run.start + run.length - pos).min(buf.len() as u64) as usize;
            read_at(&*source, &mut buf[..n], pos)?;
            out.write_all_at(&buf[..n], pos)
                .map_err(|e| imgblk::Error::io("writing backup.raw failed", e))?;
            pos += n as u64;
            copied += n as u64;
        }
        Ok(())
    })?;
    println!(
        "copied {copied} bytes of data into backup.raw ({} bytes virtual)",
        source.virtual_size()
    );
    Ok(())
}
