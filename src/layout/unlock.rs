//! Layouts with the LUKS volumes inside them unlocked: what a guest's disks hold once its
//! encrypted partitions are opened, so that a volume group inside one is assembled and
//! its logical volumes can be named (`--lv VG/LV --key-file K`, `inspect --key-file K`).

use super::luks::LuksVolume;
use super::{discover, ContentKind, Layout, Node};
use crate::image::DiskImage;
use std::sync::Arc;

/// Discovers `images` with every LUKS volume that `key` opens unlocked and discovered
/// together with them; the unlocked volumes are the disks named `luks-NODE`. Volumes the
/// key does not open become warnings.
pub fn discover_unlocked(images: &[Arc<dyn DiskImage>], key: &[u8]) -> Layout {
    let layout = discover(images);
    let mut all = images.to_vec();
    let mut names = Vec::new();
    let mut failures = Vec::new();
    for node in layout.nodes() {
        if node.content.as_ref().map(|c| c.kind) != Some(ContentKind::Luks) {
            continue;
        }
        match node.image().and_then(|image| LuksVolume::open(image, key)) {
            Ok(volume) => {
                all.push(Arc::new(volume));
                names.push(format!("luks-{}", node.name));
            }
            Err(e) => failures.push(format!("{}: cannot unlock: {e}", node.name)),
        }
    }
    if names.is_empty() {
        let mut layout = layout;
        layout.warnings.extend(failures);
        return layout;
    }
    let mut layout = discover(&all);
    for (i, name) in names.iter().enumerate() {
        let old = format!("disk{}", images.len() + i);
        if let Some(disk) = layout.disks.get_mut(images.len() + i) {
            rename(disk, &old, name);
        }
        for pv in layout.volume_groups.iter_mut().flat_map(|vg| &mut vg.pvs) {
            if let Some(device) = pv.device.as_mut() {
                if let Some(rest) = device.strip_prefix(&old) {
                    *device = format!("{name}{rest}");
                }
            }
        }
    }
    layout.warnings.extend(failures);
    layout
}

/// Renames `node` and its children from the `old` disk name prefix to `new`.
fn rename(node: &mut Node, old: &str, new: &str) {
    if let Some(rest) = node.name.strip_prefix(old) {
        node.name = format!("{new}{rest}");
    }
    for child in &mut node.children {
        rename(child, old, new);
    }
}
