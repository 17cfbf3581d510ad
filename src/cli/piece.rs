//! `--part N` / `--lv VG/LV`: choosing what to serve or read, a whole image, one of its
//! partitions, or a logical volume of a guest VG that may span several images.

use crate::layout::PieceId;
use clap::ValueHint;

/// `--part` / `--lv`: which piece of the image(s) to use.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PieceArgs {
    /// Use partition N of the (first) image, numbered as Linux numbers them
    /// (/dev/sdaN): MBR 1-4 primary, 5+ logical; GPT entries from 1.
    #[arg(long, value_name = "N", conflicts_with = "lv", value_hint = ValueHint::Other,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub part: Option<u32>,
    /// Use logical volume LV of the guest's volume group VG, found on any of the images
    /// given (for a VG spanning several disks, give them all).
    #[arg(long, value_name = "VG/LV", value_hint = ValueHint::Other,
          value_parser = PieceId::logical_volume)]
    pub lv: Option<PieceId>,
}

impl PieceArgs {
    /// The piece the options designate, if any.
    pub fn piece(&self) -> Option<PieceId> {
        match (&self.part, &self.lv) {
            (Some(n), _) => Some(PieceId::Partition(*n)),
            (None, Some(lv)) => Some(lv.clone()),
            (None, None) => None,
        }
    }
}
