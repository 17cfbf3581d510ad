//! The volume group described by a parsed metadata text: its PVs, LVs and their segments,
//! checked for the values that later become offsets and sizes.

use super::metadata::{Section, Value};
use crate::error::{Error, Result};

/// Most PVs, LVs or segments of one LV accepted in a VG's metadata.
pub const MAX_ITEMS: usize = 4096;

/// A volume group as its metadata describes it. Sizes are in 512-byte sectors, as in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct VgMetadata {
    /// VG name.
    pub name: String,
    /// VG UUID (dashed).
    pub id: String,
    /// Sequence number; the copy with the highest one is current.
    pub seqno: u64,
    /// Extent size in sectors.
    pub extent_size: u64,
    /// The PVs, in metadata order.
    pub pvs: Vec<PvMeta>,
    /// The LVs, in metadata order.
    pub lvs: Vec<LvMeta>,
}

/// A PV as the VG metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvMeta {
    /// Name used inside the metadata (`pv0`).
    pub name: String,
    /// PV UUID (dashed).
    pub id: String,
    /// First sector of the first extent.
    pub pe_start: u64,
    /// Number of extents.
    pub pe_count: u64,
}

/// An LV as the VG metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvMeta {
    /// LV name.
    pub name: String,
    /// LV UUID.
    pub id: String,
    /// Whether the LV is user-visible (hidden ones are parts of others).
    pub visible: bool,
    /// Segments ordered by `start_extent`.
    pub segments: Vec<SegmentMeta>,
}

/// One segment of an LV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    /// First LV extent it covers.
    pub start_extent: u64,
    /// Number of LV extents it covers.
    pub extent_count: u64,
    /// Segment type (`striped` covers linear too).
    pub kind: String,
    /// Stripe size in sectors (striped segments with more than one stripe).
    pub stripe_size: u64,
    /// `(pv name, first extent on that PV)` per stripe.
    pub stripes: Vec<(String, u64)>,
    /// For a `snapshot` segment: the LV holding the snapshot's copy-on-write data.
    pub cow_store: Option<String>,
}

fn field_error(what: &str, key: &str, problem: &str) -> Error {
    Error::corrupt(format!("LVM metadata: {what} field {key} {problem}"))
}

fn uint(s: &Section, what: &str, key: &str) -> Result<u64> {
    match s.get(key) {
        Some(Value::Int(i)) => {
            u64::try_from(*i).map_err(|_| field_error(what, key, &format!("is negative ({i})")))
        }
        Some(_) => Err(field_error(what, key, "is not a number")),
        None => Err(field_error(what, key, "is missing")),
    }
}

fn string(s: &Section, what: &str, key: &str) -> Result<String> {
    s.str(key)
        .map(str::to_string)
        .ok_or_else(|| field_error(what, key, "is missing or not a string"))
}

impl VgMetadata {
    /// Reads the VG from the top level of a metadata text: its one section.
    pub fn from_root(root: &Section) -> Result<Self> {
        let mut sections = root.sections();
        let (name, vg) = sections
            .next()
            .ok_or_else(|| Error::corrupt("LVM metadata has no volume group section"))?;
        if sections.next().is_some() {
            return Err(Error::corrupt(
                "LVM metadata has more than one top-level section",
            ));
        }
        let what = format!("VG {name}");
        let extent_size = uint(vg, &what, "extent_size")?;
        if extent_size == 0 || extent_size > 1 << 32 {
            return Err(field_error(
                &what,
                "extent_size",
                &format!("is {extent_size}, must be 1..=2^32 sectors"),
            ));
        }
        let mut pvs = Vec::new();
        if let Some(list) = vg.section("physical_volumes") {
            for (pv_name, pv) in list.sections().take(MAX_ITEMS) {
                let what = format!("PV {pv_name} of VG {name}");
                pvs.push(PvMeta {
                    name: pv_name.to_string(),
                    id: string(pv, &what, "id")?,
                    pe_start: uint(pv, &what, "pe_start")?,
                    pe_count: uint(pv, &what, "pe_count")?,
                });
            }
        }
        let mut lvs = Vec::new();
        if let Some(list) = vg.section("logical_volumes") {
            for (lv_name, lv) in list.sections().take(MAX_ITEMS) {
                lvs.push(LvMeta::from_section(name, lv_name, lv)?);
            }
        }
        Ok(VgMetadata {
            name: name.to_string(),
            id: string(vg, &what, "id")?,
            seqno: uint(vg, &what, "seqno")?,
            extent_size,
            pvs,
            lvs,
        })
    }
}

impl LvMeta {
    fn from_section(vg: &str, name: &str, lv: &Section) -> Result<Self> {
        let what = format!("LV {vg}/{name}");
        let mut segments = Vec::new();
        for (seg_name, seg) in lv.sections().take(MAX_ITEMS) {
            let what = format!("{what} {seg_name}");
            let kind = string(seg, &what, "type")?;
            let mut stripes = Vec::new();
            if let Some(list) = seg.list("stripes") {
                for pair in list.chunks(2) {
                    match pair {
                        [Value::Str(pv), Value::Int(pe)] if *pe >= 0 => {
                            stripes.push((pv.clone(), *pe as u64))
                        }
                        _ => {
                            return Err(field_error(
                                &what,
                                "stripes",
                                "is not a list of \"pv\", extent pairs",
                            ))
                        }
                    }
                }
            }
            segments.push(SegmentMeta {
                start_extent: uint(seg, &what, "start_extent")?,
                extent_count: uint(seg, &what, "extent_count")?,
                stripe_size: if stripes.len() > 1 {
                    uint(seg, &what, "stripe_size")?
                } else {
                    0
                },
                cow_store: seg.str("cow_store").map(str::to_string),
                kind,
                stripes,
            });
        }
        segments.sort_by_key(|s| s.start_extent);
        let mut next = 0u64;
        for s in &segments {
            if s.start_extent != next {
                return Err(Error::corrupt(format!(
                    "LVM metadata: {what} has a segment at extent {} where extent {next} was expected",
                    s.start_extent
                )));
            }
            next = next
                .checked_add(s.extent_count)
                .ok_or_else(|| field_error(&what, "extent_count", "overflows"))?;
        }
        Ok(LvMeta {
            name: name.to_string(),
            id: lv.str("id").unwrap_or_default().to_string(),
            visible: lv.has_flag("status", "VISIBLE"),
            segments,
        })
    }

    /// Size in extents.
    pub fn extents(&self) -> u64 {
        self.segments.iter().map(|s| s.extent_count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::lvm::metadata::parse;

    #[test]
    fn reads_a_vg() {
        let text = "vg0 {\nid = \"V\"\nseqno = 3\nextent_size = 8192\n\
            physical_volumes {\npv0 {\nid = \"P\"\npe_start = 2048\npe_count = 10\n}\n}\n\
            logical_volumes {\nlv {\nid = \"L\"\nstatus = [\"READ\", \"VISIBLE\"]\n\
            segment2 {\nstart_extent = 2\nextent_count = 2\ntype = \"striped\"\nstripe_count = 2\n\
            stripe_size = 128\nstripes = [\"pv0\", 4, \"pv0\", 6]\n}\n\
            segment1 {\nstart_extent = 0\nextent_count = 2\ntype = \"striped\"\nstripe_count = 1\n\
            stripes = [\"pv0\", 0]\n}\n}\n}\n}\n";
        let vg = VgMetadata::from_root(&parse(text).unwrap()).unwrap();
        assert_eq!(
            (vg.name.as_str(), vg.seqno, vg.extent_size),
            ("vg0", 3, 8192)
        );
        let lv = &vg.lvs[0];
        assert!(lv.visible);
        assert_eq!(lv.extents(), 4);
        assert_eq!(lv.segments[0].stripes, vec![("pv0".to_string(), 0)]);
        assert_eq!(lv.segments[1].stripe_size, 128);
    }

    #[test]
    fn holes_and_bad_fields_are_errors() {
        let base = |seg: &str| {
            format!(
                "vg0 {{\nid = \"V\"\nseqno = 3\nextent_size = 8192\nlogical_volumes {{\nlv {{\n{seg}\n}}\n}}\n}}\n"
            )
        };
        for (seg, expect) in [
            ("segment1 {\nstart_extent = 1\nextent_count = 2\ntype = \"striped\"\n}", "where extent 0"),
            ("segment1 {\nstart_extent = 0\nextent_count = -2\ntype = \"striped\"\n}", "negative"),
            ("segment1 {\nstart_extent = 0\nextent_count = 2\n}", "type is missing"),
            ("segment1 {\nstart_extent = 0\nextent_count = 2\ntype = \"striped\"\nstripes = [1, 2]\n}", "pairs"),
        ] {
            let e = VgMetadata::from_root(&parse(&base(seg)).unwrap()).unwrap_err().to_string();
            assert!(e.contains(expect), "{seg}: {e}");
        }
        let e = VgMetadata::from_root(&parse("a = 1").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no volume group"), "{e}");
    }
}
