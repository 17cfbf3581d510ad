//! Putting volume groups together from the PVs found on all disks: the newest metadata copy
//! (highest seqno over every metadata area of every PV) wins, PVs are matched by UUID, and
//! each LV becomes a [`SegmentView`] over the PVs' images.

use super::label::{MetadataCopy, PvLabel, SECTOR};
use super::metadata;
use super::model::{LvMeta, VgMetadata};
use crate::error::{Error, ErrorKind, Result};
use crate::image::DiskImage;
use crate::layout::view::{Area, Segment, SegmentView, MAX_STRIPES};
use std::sync::Arc;

/// A PV found on a disk or partition.
#[derive(Clone)]
pub struct FoundPv {
    /// Name of the layout node holding it (`disk0p2`).
    pub device: String,
    /// The bytes of the PV.
    pub image: Arc<dyn DiskImage>,
    /// Its label.
    pub label: PvLabel,
    /// The metadata texts of its metadata areas.
    pub copies: Vec<MetadataCopy>,
}

/// A PV of a VG that was found: where, and its bytes.
#[derive(Clone)]
pub struct Member {
    /// Name of the layout node holding it.
    pub device: String,
    /// The bytes of the PV.
    pub image: Arc<dyn DiskImage>,
}

/// A volume group assembled from the PVs found.
#[derive(Clone)]
pub struct AssembledVg {
    /// The newest metadata.
    pub meta: VgMetadata,
    /// For each PV of `meta.pvs`, where it was found; `None` if missing.
    pub members: Vec<Option<Member>>,
    /// Problems: older copies, missing PVs, disagreeing copies.
    pub warnings: Vec<String>,
}

/// UUIDs compare without their dashes.
fn same_uuid(a: &str, b: &str) -> bool {
    a.chars()
        .filter(|&c| c != '-')
        .eq(b.chars().filter(|&c| c != '-'))
}

/// Groups the metadata copies of `found` by VG and picks the newest of each. Returns the
/// VGs and warnings about metadata that could not be read at all.
pub fn assemble(found: &[FoundPv]) -> (Vec<AssembledVg>, Vec<String>) {
    let mut warnings = Vec::new();
    // (vg, which PV it came from), in discovery order.
    let mut copies: Vec<(VgMetadata, usize)> = Vec::new();
    for (i, pv) in found.iter().enumerate() {
        let earlier = found
            .iter()
            .take(i)
            .find(|p| same_uuid(&p.label.uuid, &pv.label.uuid));
        if let Some(first) = earlier {
            warnings.push(format!(
                "PV {} is on both {} and {}; using {}",
                pv.label.uuid, first.device, pv.device, first.device
            ));
            continue;
        }
        for copy in &pv.copies {
            match metadata::parse(&copy.text).and_then(|root| VgMetadata::from_root(&root)) {
                Ok(vg) => copies.push((vg, i)),
                Err(e) => warnings.push(format!(
                    "PV {} on {}: metadata at byte {}: {e}",
                    pv.label.uuid, pv.device, copy.area.offset
                )),
            }
        }
    }
    let mut vgs: Vec<AssembledVg> = Vec::new();
    let mut done: Vec<String> = Vec::new();
    for (vg, _) in &copies {
        if done.contains(&vg.id) {
            continue;
        }
        done.push(vg.id.clone());
        let group: Vec<&(VgMetadata, usize)> =
            copies.iter().filter(|(v, _)| v.id == vg.id).collect();
        vgs.extend(pick_newest(&group, found));
    }
    (vgs, warnings)
}

/// Chooses the copy with the highest seqno among `group` and matches its PVs to `found`.
fn pick_newest(group: &[&(VgMetadata, usize)], found: &[FoundPv]) -> Option<AssembledVg> {
    let mut best = *group.first()?;
    for &c in group {
        if c.0.seqno > best.0.seqno {
            best = c;
        }
    }
    let meta = best.0.clone();
    let device_of = |i: usize| found.get(i).map_or("?", |f| f.device.as_str());
    let mut warnings = Vec::new();
    for (vg, pv) in group {
        let device = device_of(*pv);
        if vg.seqno < meta.seqno {
            warnings.push(format!(
                "{device} holds metadata seqno {} of VG {}, older than seqno {}; using the newer",
                vg.seqno, meta.name, meta.seqno
            ));
        } else if *vg != meta {
            warnings.push(format!(
                "{device} holds a different metadata copy with the same seqno {}; using the one on {}",
                meta.seqno,
                device_of(best.1)
            ));
        }
    }
    let members = meta
        .pvs
        .iter()
        .map(|pv| {
            let member = found.iter().find(|f| same_uuid(&f.label.uuid, &pv.id));
            if member.is_none() {
                warnings.push(format!(
                    "PV {} (uuid {}) of VG {} is missing",
                    pv.name, pv.id, meta.name
                ));
            }
            member.map(|f| Member {
                device: f.device.clone(),
                image: f.image.clone(),
            })
        })
        .collect();
    Some(AssembledVg {
        meta,
        members,
        warnings,
    })
}

impl AssembledVg {
    /// Builds the image of `lv`: its segments mapped onto the PVs' images. Fails naming the
    /// PV when one it needs is missing, and for segment types other than linear/striped.
    pub fn lv_image(&self, lv: &LvMeta) -> Result<SegmentView> {
        let name = format!("{}/{}", self.meta.name, lv.name);
        let fail = |kind: ErrorKind, msg: String| Error::new(kind, format!("LV {name}: {msg}"));
        if self
            .meta
            .lvs
            .iter()
            .flat_map(|l| &l.segments)
            .any(|s| s.cow_store.as_deref() == Some(&lv.name))
        {
            return Err(fail(
                ErrorKind::Unsupported,
                "is a snapshot; snapshots are not supported".into(),
            ));
        }
        let extent = self.meta.extent_size * SECTOR;
        let mut segments = Vec::with_capacity(lv.segments.len());
        for seg in &lv.segments {
            if seg.kind != "striped" {
                return Err(fail(
                    ErrorKind::Unsupported,
                    format!(
                        "segment type {:?} is not supported (only linear and striped)",
                        seg.kind
                    ),
                ));
            }
            let n = seg.stripes.len() as u64;
            if n == 0 || n > MAX_STRIPES as u64 || seg.extent_count % n != 0 {
                return Err(fail(
                    ErrorKind::Corrupt,
                    format!(
                        "{} extents cannot be split over {n} stripes",
                        seg.extent_count
                    ),
                ));
            }
            let per_stripe = seg.extent_count / n;
            let mut areas = Vec::with_capacity(seg.stripes.len());
            for (pv_name, first) in &seg.stripes {
                areas.push(
                    self.area(pv_name, *first, per_stripe)
                        .map_err(|e| fail(e.kind(), e.to_string()))?,
                );
            }
            let bytes = seg
                .extent_count
                .checked_mul(extent)
                .ok_or_else(|| fail(ErrorKind::Corrupt, "segment size overflows".into()))?;
            let segment = match <[Area; 1]>::try_from(areas) {
                Ok([area]) => Segment::linear(bytes, area.image, area.offset),
                Err(areas) => {
                    Segment::striped(bytes, seg.stripe_size.saturating_mul(SECTOR), areas)
                }
            };
            let segment = segment.map_err(|e| fail(e.kind(), e.to_string()))?;
            segments.push(segment);
        }
        SegmentView::new(segments).map_err(|e| fail(e.kind(), e.to_string()))
    }

    /// Where `count` extents from extent `first` of the PV called `pv_name` live.
    fn area(&self, pv_name: &str, first: u64, count: u64) -> Result<Area> {
        let idx = self
            .meta
            .pvs
            .iter()
            .position(|p| p.name == pv_name)
            .ok_or_else(|| {
                Error::corrupt(format!("refers to {pv_name}, which the VG does not list"))
            })?;
        let (Some(pv), Some(member)) = (self.meta.pvs.get(idx), self.members.get(idx)) else {
            return Err(Error::corrupt(format!("{pv_name} has no entry")));
        };
        let Some(member) = member else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("needs PV {} (uuid {}), which is missing", pv.name, pv.id),
            ));
        };
        if !matches!(first.checked_add(count), Some(end) if end <= pv.pe_count) {
            return Err(Error::corrupt(format!(
                "uses extents {first}..+{count} of {pv_name}, which has {}",
                pv.pe_count
            )));
        }
        let offset = first
            .checked_mul(self.meta.extent_size)
            .and_then(|s| s.checked_add(pv.pe_start))
            .and_then(|s| s.checked_mul(SECTOR))
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "extent {first} of {pv_name} lies beyond 2^64 bytes"
                ))
            })?;
        Ok(Area {
            image: member.image.clone(),
            offset,
        })
    }
}
