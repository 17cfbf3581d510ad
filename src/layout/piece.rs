//! [`PieceId`]: the name of a piece of a guest's disks that a command serves or reads on
//! its own (`--part N`, `--lv VG/LV`), typed, so that no command builds layout names by
//! hand or parses them back by stripping prefixes.

use super::NodeKind;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A partition of the first image, or a logical volume of a guest volume group.
///
/// Shown (and recorded) as the layout names its node: `disk0p2`, `vg0/root`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PieceId {
    /// Partition `N` of the first image, numbered as Linux numbers them (MBR 1-4
    /// primary, 5+ logical; GPT entries from 1).
    Partition(u32),
    /// Logical volume `lv` of volume group `vg`.
    LogicalVolume {
        /// The volume group's name.
        vg: String,
        /// The logical volume's name.
        lv: String,
    },
}

impl PieceId {
    /// Parses `--lv`'s `VG/LV`; the error says what is expected.
    pub fn logical_volume(name: &str) -> Result<PieceId, String> {
        match name.split_once('/') {
            Some((vg, lv)) if !vg.is_empty() && !lv.is_empty() && !lv.contains('/') => {
                Ok(PieceId::LogicalVolume {
                    vg: vg.to_string(),
                    lv: lv.to_string(),
                })
            }
            _ => Err(format!(
                "`{name}` is not VG/LV: a logical volume is named by its volume group and \
                 its own name, as `imgblk inspect` lists them (vg0/root)"
            )),
        }
    }

    /// The piece a layout node stands for, if it is one: `disk0pN` or `VG/LV`. The whole
    /// disk (`disk0`), other disks' partitions and extended partitions are not pieces.
    pub fn of_node(name: &str) -> Option<PieceId> {
        name.parse().ok()
    }

    /// The kind of layout node it names.
    pub fn node_kind(&self) -> NodeKind {
        match self {
            PieceId::Partition(_) => NodeKind::Partition,
            PieceId::LogicalVolume { .. } => NodeKind::LogicalVolume,
        }
    }

    /// How a user names it on the command line: the option and its value
    /// (`--part 2`, `--lv vg0/root`).
    pub fn cli_args(&self) -> [String; 2] {
        match self {
            PieceId::Partition(n) => ["--part".to_string(), n.to_string()],
            PieceId::LogicalVolume { vg, lv } => ["--lv".to_string(), format!("{vg}/{lv}")],
        }
    }

    /// What the user typed for it: `2` for a partition, `vg0/root` for an LV.
    pub fn user_name(&self) -> String {
        match self {
            PieceId::Partition(n) => n.to_string(),
            PieceId::LogicalVolume { vg, lv } => format!("{vg}/{lv}"),
        }
    }
}

impl fmt::Display for PieceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PieceId::Partition(n) => write!(f, "disk0p{n}"),
            PieceId::LogicalVolume { vg, lv } => write!(f, "{vg}/{lv}"),
        }
    }
}

impl FromStr for PieceId {
    type Err = String;

    /// Parses a layout node name: `disk0pN` or `VG/LV`.
    fn from_str(name: &str) -> Result<PieceId, String> {
        if let Some(number) = name.strip_prefix("disk0p") {
            return number
                .parse()
                .ok()
                .filter(|&n| n > 0 && number.bytes().all(|b| b.is_ascii_digit()))
                .map(PieceId::Partition)
                .ok_or_else(|| format!("`{name}` is not a partition of the first disk"));
        }
        PieceId::logical_volume(name)
    }
}

impl Serialize for PieceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PieceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PieceId, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_display_and_parse() {
        for name in ["disk0p1", "disk0p12", "vg0/root", "my-vg/swap_1"] {
            let id: PieceId = name.parse().unwrap();
            assert_eq!(id.to_string(), name);
        }
        assert_eq!("disk0p5".parse(), Ok(PieceId::Partition(5)));
    }

    #[test]
    fn what_is_not_a_piece_is_refused() {
        for name in [
            "disk0", "disk1p2", "disk0p", "disk0p0", "disk0p+3", "root", "/root", "vg/", "a/b/c",
        ] {
            assert!(PieceId::of_node(name).is_none(), "{name}");
        }
        let err = PieceId::logical_volume("root").unwrap_err();
        assert!(err.contains("VG/LV"), "{err}");
    }

    #[test]
    fn command_line_spelling() {
        let lv = PieceId::logical_volume("vg0/root").unwrap();
        assert_eq!(lv.cli_args(), ["--lv".to_string(), "vg0/root".to_string()]);
        assert_eq!(PieceId::Partition(2).cli_args()[1], "2");
        assert_eq!(PieceId::Partition(2).user_name(), "2");
        assert_eq!(lv.node_kind(), NodeKind::LogicalVolume);
    }

    #[test]
    fn records_keep_the_layout_name() {
        let id = PieceId::Partition(3);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"disk0p3\"");
        assert_eq!(serde_json::from_str::<PieceId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<PieceId>("\"disk0\"").is_err());
    }
}
