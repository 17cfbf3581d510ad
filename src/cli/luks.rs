//! LUKS options of the commands: `--luks` and `--key-file` for `cat` and `attach`,
//! `--key-file` for `inspect`, and getting the key (a file, or a passphrase prompt).

use crate::error::Result;
use crate::image::DiskImage;
use crate::layout::luks::LuksVolume;
use crate::layout::{discover, ContentKind, Layout, Node};
use crate::serve::{self, LuksKey};
use std::path::PathBuf;
use std::sync::Arc;

/// `--luks` / `--key-file`: decrypt what was selected.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LuksArgs {
    /// Decrypt the selected partition or LV (or the whole image) as a LUKS1/LUKS2 volume.
    #[arg(long)]
    pub luks: bool,
    /// Read the LUKS key from FILE (all its bytes, as `cryptsetup --key-file`); without
    /// it, the passphrase is asked for on the terminal.
    #[arg(long, value_name = "FILE", requires = "luks")]
    pub key_file: Option<PathBuf>,
}

impl LuksArgs {
    /// Where the key comes from, with `--luks`: the key file, else a typed passphrase.
    pub fn key(&self) -> Option<LuksKey> {
        self.luks.then(|| match &self.key_file {
            Some(path) => LuksKey::File(path.clone()),
            None => LuksKey::Prompt,
        })
    }

    /// `image` itself, or with `--luks` its decrypted contents.
    pub fn apply(&self, image: Arc<dyn DiskImage>) -> Result<Arc<dyn DiskImage>> {
        serve::unlock(image, self.key().as_ref())
    }
}

/// `--key-file` of `inspect`: unlock the LUKS volumes found.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeyFileArgs {
    /// Unlock the LUKS volumes found with the key in FILE and show what they hold, as
    /// disks named luks-NODE.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// With a key file, unlocks every LUKS volume of `layout` and discovers `images` again
/// together with them (so that a VG inside LUKS is assembled); the unlocked volumes are
/// the disks named `luks-NODE`. Volumes the key does not open get a warning.
pub fn unlock_all(
    args: &KeyFileArgs,
    images: &[Arc<dyn DiskImage>],
    layout: Layout,
) -> Result<Layout> {
    let Some(path) = &args.key_file else {
        return Ok(layout);
    };
    let key = LuksKey::File(path.clone()).read()?;
    let mut all = images.to_vec();
    let mut names = Vec::new();
    let mut failures = Vec::new();
    for node in layout.nodes() {
        if node.content.as_ref().map(|c| c.kind) != Some(ContentKind::Luks) {
            continue;
        }
        match node.image().and_then(|image| LuksVolume::open(image, &key)) {
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
        return Ok(layout);
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
    Ok(layout)
}

fn rename(node: &mut Node, old: &str, new: &str) {
    if let Some(rest) = node.name.strip_prefix(old) {
        node.name = format!("{new}{rest}");
    }
    for child in &mut node.children {
        rename(child, old, new);
    }
}
