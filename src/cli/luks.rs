//! LUKS options of the commands: `--luks` and `--key-file` for `attach`, `cat`,
//! `convert`, `ls`, `get` and `tar`; `--key-file` alone for `inspect`, `mount` and `fsck`.

use crate::error::Result;
use crate::image::DiskImage;
use crate::serve::{self, LuksKey};
use std::path::PathBuf;
use std::sync::Arc;

/// `--luks` / `--key-file`: decrypt what was selected, or unlock what is inside.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LuksArgs {
    /// Decrypt the selected partition or LV (or the whole image) as a LUKS1/LUKS2 volume.
    #[arg(long)]
    pub luks: bool,
    /// Read the LUKS key from FILE (all its bytes, as `cryptsetup --key-file`; `-` is
    /// standard input, or a passphrase asked for when it is a terminal). With --luks it
    /// decrypts the selected piece (without, the passphrase is asked for on the
    /// terminal); alone it unlocks every LUKS volume in the images, so that --lv can name
    /// a logical volume inside one, as `imgblk inspect --key-file` shows them.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

impl LuksArgs {
    /// Where the key of the selected piece comes from, with `--luks`: the key file, else
    /// a typed passphrase.
    pub fn key(&self) -> Option<LuksKey> {
        self.luks.then(|| match &self.key_file {
            Some(path) => LuksKey::File(path.clone()),
            None => LuksKey::Prompt,
        })
    }

    /// The key that unlocks every LUKS volume found before a piece is chosen: `--key-file`
    /// without `--luks`.
    pub fn unlock(&self) -> Option<LuksKey> {
        match (self.luks, &self.key_file) {
            (false, Some(path)) => Some(LuksKey::File(path.clone())),
            _ => None,
        }
    }

    /// `image` itself, or with `--luks` its decrypted contents.
    pub fn apply(&self, image: Arc<dyn DiskImage>) -> Result<Arc<dyn DiskImage>> {
        serve::unlock(image, self.key().as_ref())
    }
}

/// `--key-file` of the commands that find volumes themselves (`inspect`, `mount`, `fsck`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeyFileArgs {
    /// Unlock the LUKS volumes found with the key in FILE (all its bytes; `-` is standard
    /// input, or a passphrase asked for once when it is a terminal) and use what they
    /// hold, as disks named luks-NODE: a VG inside is assembled, so --lv can name its
    /// logical volumes.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

impl KeyFileArgs {
    /// The key, if a key file was given.
    pub fn key(&self) -> Option<LuksKey> {
        self.key_file.clone().map(LuksKey::File)
    }
}
