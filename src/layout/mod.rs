//! What is inside disk images: partition tables (MBR, GPT), LVM2 volume groups, and the file
//! systems or other content of each volume.
//!
//! [`discover`] reads all of it through the images' extent maps (so it works on qcow2 as
//! well as raw) and returns a [`Layout`]: a tree disk → partitions, plus the volume groups
//! assembled from the PVs found anywhere in it, each with its LVs. Every volume is a
//! [`DiskImage`] of its own ([`SliceView`] for partitions, [`SegmentView`] for LVs) that
//! can be served directly. Problems become warnings on the node they concern; nothing in
//! a hostile image makes discovery panic, loop or allocate without bound.

pub mod gpt;
pub mod luks;
pub mod lvm;
pub mod mbr;
pub mod piece;
pub mod probe;
pub mod table;
pub mod unlock;
pub mod util;
pub mod view;

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod testutil;

pub use piece::PieceId;
pub use probe::{Content, ContentKind};
pub use table::{Partition, PartitionTable, TableKind};
pub use unlock::discover_unlocked;
pub use view::{Area, Segment, SegmentView, SliceView};

use crate::error::{Error, ErrorKind, Result};
use crate::image::DiskImage;
use lvm::{AssembledVg, FoundPv};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// What a node of the layout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A whole image.
    Disk,
    /// A partition (primary, logical or GPT).
    Partition,
    /// An MBR extended partition: holds logical partitions, not data.
    Extended,
    /// An LVM logical volume.
    LogicalVolume,
}

/// The image behind a node, kept out of the serialized form.
#[derive(Clone, Default)]
pub struct ImageHandle(Option<Arc<dyn DiskImage>>);

impl fmt::Debug for ImageHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(image) => write!(f, "<{} bytes>", image.virtual_size()),
            None => f.write_str("<none>"),
        }
    }
}

/// The partition table of a disk node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableInfo {
    /// MBR or GPT.
    pub kind: TableKind,
    /// Logical sector size of the table.
    pub sector_size: u64,
    /// Disk GUID or MBR disk signature.
    pub id: Option<String>,
}

/// A disk, partition or logical volume.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Unique name: `disk0`, `disk0p1`, `vg0/root`.
    pub name: String,
    /// What it is.
    pub kind: NodeKind,
    /// Byte offset in its parent (0 for disks and LVs).
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// For a disk, its partition table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<TableInfo>,
    /// For a partition, its table entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<Partition>,
    /// What the volume holds (file system, swap, PV, ...), with label and UUID.
    pub content: Option<Content>,
    /// For an LVM PV, the VG it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vg: Option<String>,
    /// Problems that did not stop discovery.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Why the volume cannot be served, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Partitions of a disk.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Node>,
    #[serde(skip)]
    image: ImageHandle,
    #[serde(skip)]
    error_kind: Option<ErrorKind>,
}

impl Node {
    fn new(name: String, kind: NodeKind, offset: u64, size: u64) -> Self {
        Node {
            name,
            kind,
            offset,
            size,
            table: None,
            partition: None,
            content: None,
            vg: None,
            warnings: Vec::new(),
            error: None,
            children: Vec::new(),
            image: ImageHandle(None),
            error_kind: None,
        }
    }

    /// Records why the volume cannot be served.
    fn fail(&mut self, e: Error) {
        self.error = Some(e.to_string());
        self.error_kind = Some(e.kind());
    }

    /// The volume as an image of its own, to serve or read.
    pub fn image(&self) -> Result<Arc<dyn DiskImage>> {
        match (&self.image.0, &self.error) {
            (Some(image), _) => Ok(image.clone()),
            (None, Some(error)) => {
                let kind = self.error_kind.unwrap_or(ErrorKind::Unsupported);
                Err(Error::new(kind, error.clone()))
            }
            (None, None) => Err(Error::invalid(format!("{} is not a volume", self.name))),
        }
    }

    /// The content's label, if any.
    pub fn label(&self) -> Option<&str> {
        self.content.as_ref()?.label.as_deref()
    }

    /// The content's UUID, if any.
    pub fn uuid(&self) -> Option<&str> {
        self.content.as_ref()?.uuid.as_deref()
    }

    /// This node and all below it, depth first.
    fn walk<'a>(&'a self, out: &mut Vec<&'a Node>) {
        out.push(self);
        for child in &self.children {
            child.walk(out);
        }
    }
}

/// A PV of a volume group and where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VgPv {
    /// Name in the VG metadata (`pv0`).
    pub name: String,
    /// PV UUID.
    pub uuid: String,
    /// The node holding it, `None` when missing.
    pub device: Option<String>,
}

/// An LVM volume group.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeGroup {
    /// VG name.
    pub name: String,
    /// VG UUID.
    pub uuid: String,
    /// Sequence number of the metadata in use.
    pub seqno: u64,
    /// Extent size in bytes.
    pub extent_size: u64,
    /// Its PVs.
    pub pvs: Vec<VgPv>,
    /// Its visible logical volumes.
    pub lvs: Vec<Node>,
    /// Problems (older metadata copies, missing PVs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Everything found in a set of images.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Layout {
    /// One node per image given, in order, with their partitions.
    pub disks: Vec<Node>,
    /// Volume groups assembled from PVs on any of the disks.
    pub volume_groups: Vec<VolumeGroup>,
    /// Problems not tied to one node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Layout {
    /// Every node: disks with their partitions depth first, then the LVs.
    pub fn nodes(&self) -> Vec<&Node> {
        let mut out = Vec::new();
        for disk in &self.disks {
            disk.walk(&mut out);
        }
        out.extend(self.volume_groups.iter().flat_map(|vg| &vg.lvs));
        out
    }

    /// The node called `name` (`disk0p2`, `vg0/root`).
    pub fn find(&self, name: &str) -> Option<&Node> {
        self.nodes().into_iter().find(|n| n.name == name)
    }
}

/// Reads the partition tables, LVM metadata and volume contents of `images`, taken as the
/// disks of one machine (a VG may span them).
pub fn discover(images: &[Arc<dyn DiskImage>]) -> Layout {
    let mut layout = Layout::default();
    let mut pvs = Vec::new();
    for (i, image) in images.iter().enumerate() {
        layout
            .disks
            .push(discover_disk(format!("disk{i}"), image, &mut pvs));
    }
    let (vgs, warnings) = lvm::assemble(&pvs);
    layout.warnings.extend(warnings);
    for vg in &vgs {
        if layout.volume_groups.iter().any(|v| v.name == vg.meta.name) {
            layout.warnings.push(format!(
                "two volume groups are named {} (uuids differ); only the first is found by name",
                vg.meta.name
            ));
        }
        layout.volume_groups.push(volume_group(vg));
    }
    for vg in &layout.volume_groups {
        for device in vg.pvs.iter().filter_map(|pv| pv.device.as_deref()) {
            if let Some(node) = layout.disks.iter_mut().find_map(|d| find_mut(d, device)) {
                node.vg = Some(vg.name.clone());
            }
        }
    }
    layout
}

fn find_mut<'a>(node: &'a mut Node, name: &str) -> Option<&'a mut Node> {
    if node.name == name {
        return Some(node);
    }
    node.children.iter_mut().find_map(|c| find_mut(c, name))
}

/// Probes `image` for content; returns the bytes read from its start.
fn inspect(node: &mut Node, image: &Arc<dyn DiskImage>) -> Option<Vec<u8>> {
    node.image = ImageHandle(Some(image.clone()));
    let head = match util::read_upto(&**image, 0, probe::HEAD_LEN) {
        Ok(head) => head,
        Err(e) => {
            node.warnings
                .push(format!("cannot read the volume's start: {e}"));
            return None;
        }
    };
    match probe::probe_head(&head, &**image) {
        Ok(content) => node.content = content,
        Err(e) => node.warnings.push(e.to_string()),
    }
    Some(head)
}

/// Registers the node as a PV when its content says so, reading its metadata areas.
fn register_pv(node: &mut Node, image: &Arc<dyn DiskImage>, head: &[u8], pvs: &mut Vec<FoundPv>) {
    if node.content.as_ref().map(|c| c.kind) != Some(ContentKind::Lvm2Member) {
        return;
    }
    let Ok(Some(label)) = lvm::find_label(head) else {
        return;
    };
    let (copies, warnings) = lvm::read_metadata(&**image, &label);
    node.warnings.extend(warnings);
    pvs.push(FoundPv {
        device: node.name.clone(),
        image: image.clone(),
        label,
        copies,
    });
}

fn discover_disk(name: String, image: &Arc<dyn DiskImage>, pvs: &mut Vec<FoundPv>) -> Node {
    let mut node = Node::new(name, NodeKind::Disk, 0, image.virtual_size());
    let Some(head) = inspect(&mut node, image) else {
        return node;
    };
    // A FAT or NTFS boot sector also ends in 0x55AA but is no partition table.
    let kind = node.content.as_ref().map(|c| c.kind);
    let table = if matches!(kind, Some(ContentKind::Vfat | ContentKind::Ntfs)) {
        None
    } else {
        find_table(&**image, &head, &mut node.warnings)
    };
    let Some(table) = table else {
        register_pv(&mut node, image, &head, pvs);
        return node;
    };
    if let Some(kind) = kind.filter(|k| *k != ContentKind::Iso9660) {
        node.warnings.push(format!(
            "the disk has a partition table and also a {} signature; using the table",
            kind.as_str()
        ));
    }
    node.table = Some(TableInfo {
        kind: table.kind,
        sector_size: table.sector_size,
        id: table.id,
    });
    node.warnings.extend(table.warnings);
    for p in table.partitions {
        let child = partition_node(&node.name, image, p, pvs);
        node.children.push(child);
    }
    node
}

/// Finds the GPT or MBR of a disk whose first bytes are `head`.
fn find_table(
    image: &dyn DiskImage,
    head: &[u8],
    warnings: &mut Vec<String>,
) -> Option<PartitionTable> {
    let mbr_kind = mbr::classify(util::slice(head, 0, 512));
    let dos = |warnings: &mut Vec<String>| match mbr::parse(image, util::slice(head, 0, 512)) {
        Ok(table) => Some(table),
        Err(e) => {
            warnings.push(format!("MBR: {e}"));
            None
        }
    };
    match (gpt::find(image), mbr_kind) {
        (Ok(Some(mut table)), kind) => {
            let note = match kind {
                mbr::MbrKind::Protective { hybrid: false } => None,
                mbr::MbrKind::Protective { hybrid: true } => {
                    Some("hybrid MBR beside the GPT; using the GPT")
                }
                mbr::MbrKind::Dos => {
                    Some("the MBR has no protective 0xEE entry but a GPT is present; using the GPT")
                }
                mbr::MbrKind::None => Some("GPT without a protective MBR"),
            };
            table.warnings.extend(note.map(String::from));
            Some(table)
        }
        (Ok(None), mbr::MbrKind::Dos) => dos(warnings),
        (Ok(None), mbr::MbrKind::Protective { .. }) => {
            warnings.push("protective MBR but no GPT header at LBA 1 or the last LBA".into());
            None
        }
        (Ok(None), mbr::MbrKind::None) => None,
        (Err(e), kind) => {
            warnings.push(format!("GPT: {e}"));
            if kind == mbr::MbrKind::Dos {
                warnings.push("using the MBR instead".into());
                return dos(warnings);
            }
            None
        }
    }
}

fn partition_node(
    disk: &str,
    image: &Arc<dyn DiskImage>,
    p: Partition,
    pvs: &mut Vec<FoundPv>,
) -> Node {
    let kind = if p.container {
        NodeKind::Extended
    } else {
        NodeKind::Partition
    };
    let mut node = Node::new(format!("{disk}p{}", p.number), kind, p.start, p.size);
    let view = SliceView::new(image.clone(), p.start, p.size);
    node.partition = Some(p);
    match view {
        Ok(view) if kind == NodeKind::Partition => {
            let view: Arc<dyn DiskImage> = Arc::new(view);
            if let Some(head) = inspect(&mut node, &view) {
                register_pv(&mut node, &view, &head, pvs);
            }
        }
        Ok(_) => {}
        Err(e) => node.fail(Error::new(
            e.kind(),
            format!("partition {}: {e}", node.name),
        )),
    }
    node
}

fn volume_group(vg: &AssembledVg) -> VolumeGroup {
    let meta = &vg.meta;
    let extent_size = meta.extent_size * lvm::label::SECTOR;
    let pvs = meta
        .pvs
        .iter()
        .zip(&vg.members)
        .map(|(pv, member)| VgPv {
            name: pv.name.clone(),
            uuid: pv.id.clone(),
            device: member.as_ref().map(|m| m.device.clone()),
        })
        .collect();
    let mut lvs = Vec::new();
    for lv in meta.lvs.iter().filter(|lv| lv.visible) {
        let size = lv.extents().saturating_mul(extent_size);
        let mut node = Node::new(
            format!("{}/{}", meta.name, lv.name),
            NodeKind::LogicalVolume,
            0,
            size,
        );
        match vg.lv_image(lv) {
            Ok(view) => {
                let view: Arc<dyn DiskImage> = Arc::new(view);
                inspect(&mut node, &view);
            }
            Err(e) => node.fail(e),
        }
        lvs.push(node);
    }
    VolumeGroup {
        name: meta.name.clone(),
        uuid: meta.id.clone(),
        seqno: meta.seqno,
        extent_size,
        pvs,
        lvs,
        warnings: vg.warnings.clone(),
    }
}
