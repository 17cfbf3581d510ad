//! Opening what a device serves or a command reads: the images, the piece of them, the
//! LUKS volume inside, and the overlay on top.

use super::spec::{LuksKey, Overlay, ServeSpec};
use crate::error::{Error, ErrorKind, Result};
use crate::image::overlay::MemoryOverlay;
use crate::image::{open_image, qcow2, DiskImage, Format, OpenOptions};
use crate::layout::luks::LuksVolume;
use crate::layout::{discover, discover_unlocked, ContentKind, Layout, NodeKind, PieceId};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a command serves or reads, once opened: the image (or the piece of it) and where
/// it came from. (Not [`crate::image::Source`], where an extent's bytes come from.)
pub struct Served {
    /// What to serve or read.
    pub image: Arc<dyn DiskImage>,
    /// Format of the first image.
    pub format: Format,
    /// The piece, when not the whole image.
    pub piece: Option<PieceId>,
}

/// Opens `paths` with `options` and picks `piece` of them (the whole first image when
/// `None`), after unlocking every LUKS volume in them with `unlock`, if given.
pub fn open_piece(
    paths: &[PathBuf],
    options: &OpenOptions,
    piece: Option<&PieceId>,
    unlock: Option<&LuksKey>,
) -> Result<Served> {
    let mut images: Vec<Arc<dyn DiskImage>> = Vec::with_capacity(paths.len());
    for path in paths {
        images.push(Arc::from(open_image(path, options)?));
    }
    let Some(first) = images.first().cloned() else {
        return Err(Error::invalid("no image given"));
    };
    let format = first.format();
    let Some(piece) = piece else {
        if images.len() > 1 {
            return Err(Error::invalid(
                "several images need --lv to say which volume to use",
            ));
        }
        return Ok(Served {
            image: first,
            format,
            piece: None,
        });
    };
    let layout = discover_with(&images, unlock)?;
    let image = select(&layout, piece)?;
    Ok(Served {
        image,
        format,
        piece: Some(piece.clone()),
    })
}

/// Checks that `spec`'s images open and hold its snapshot and piece, reading them only
/// (shared, unlocked), so that a command can report what was asked wrongly before what
/// the system lacks (ublk, root) and before it creates anything.
pub fn check_selection(spec: &ServeSpec) -> Result<()> {
    let options = OpenOptions {
        writable: false,
        force_share: true,
        journal_dir: None,
        ..spec.options.clone()
    };
    open_piece(
        &spec.images,
        &options,
        spec.piece.as_ref(),
        spec.unlock.as_ref(),
    )
    .map(drop)
}

/// The layout of `images`, with every LUKS volume in them unlocked if `unlock` is given
/// (see [`crate::layout::discover_unlocked`]).
pub fn discover_with(images: &[Arc<dyn DiskImage>], unlock: Option<&LuksKey>) -> Result<Layout> {
    Ok(match unlock {
        Some(key) => discover_unlocked(images, &key.read()?),
        None => discover(images),
    })
}

/// The volume `piece` of `layout`, or an error listing the pieces of that kind there are.
pub fn select(layout: &Layout, piece: &PieceId) -> Result<Arc<dyn DiskImage>> {
    let kind = piece.node_kind();
    if let Some(node) = layout.find(&piece.to_string()).filter(|n| n.kind == kind) {
        return node.image();
    }
    let choices: Vec<String> = layout
        .nodes()
        .into_iter()
        .filter(|n| n.kind == kind)
        .filter_map(|n| PieceId::of_node(&n.name))
        .map(|p| p.user_name())
        .collect();
    let what = match kind {
        NodeKind::LogicalVolume => "logical volume",
        _ => "partition",
    };
    let shown = piece.user_name();
    let mut message = if choices.is_empty() {
        format!("no {what} {shown}: the image has none")
    } else {
        format!("no {what} {shown}; there are: {}", choices.join(", "))
    };
    let locked = locked_luks_volumes(layout);
    if !locked.is_empty() {
        message.push_str(&format!(
            " (LUKS volumes still locked: {}; --key-file FILE unlocks them and shows what \
             they hold, --key-file - asks for the passphrase)",
            locked.join(", ")
        ));
    }
    Err(Error::new(ErrorKind::NotFound, message))
}

/// The LUKS volumes of `layout` that were not unlocked (no `luks-NODE` disk holds their
/// contents), as the user names their pieces.
fn locked_luks_volumes(layout: &Layout) -> Vec<String> {
    let nodes = layout.nodes();
    nodes
        .iter()
        .filter(|n| n.content.as_ref().map(|c| c.kind) == Some(ContentKind::Luks))
        .filter(|n| {
            let unlocked = format!("luks-{}", n.name);
            !nodes.iter().any(|m| m.name == unlocked)
        })
        .map(|n| PieceId::of_node(&n.name).map_or(n.name.clone(), |p| p.user_name()))
        .collect()
}

/// `image`, or with `key` the LUKS volume it holds, decrypted.
pub fn unlock(image: Arc<dyn DiskImage>, key: Option<&LuksKey>) -> Result<Arc<dyn DiskImage>> {
    let Some(key) = key else {
        return Ok(image);
    };
    let volume = LuksVolume::open(image, &key.read()?).map_err(|e| match key {
        LuksKey::File(path) if e.kind() == ErrorKind::Permission => e.with_path(path),
        _ => e,
    })?;
    Ok(Arc::new(volume))
}

/// Opens what `spec`'s device serves: the piece of its images, decrypted, under its
/// overlay; an overlay file is opened in the image's place (the image stays its
/// read-only backing file). The image must hold at least one sector.
pub fn open(spec: &ServeSpec) -> Result<Served> {
    let served = match &spec.overlay {
        Some(Overlay::File(file)) => open_overlay_file(file, &spec.images[0], &spec.options)?,
        _ => {
            let mut served = open_piece(
                &spec.images,
                &spec.options,
                spec.piece.as_ref(),
                spec.unlock.as_ref(),
            )?;
            served.image = unlock(served.image, spec.luks.as_ref())?;
            if spec.overlay == Some(Overlay::Memory) {
                served.image = Arc::new(MemoryOverlay::new(served.image)?);
            }
            served
        }
    };
    if served.image.virtual_size() < 512 {
        let path = spec.images.first().map_or(Path::new(""), PathBuf::as_path);
        return Err(Error::invalid("image is smaller than one 512-byte sector").with_path(path));
    }
    Ok(served)
}

/// For `--overlay FILE`: creates the qcow2 overlay file over `spec`'s whole image (opened
/// read-only first, to learn its format and size), then opens the device's image as
/// [`open`] does; a file that cannot be opened is removed again, as nothing was written
/// to it.
pub fn create_overlay_and_open(spec: &ServeSpec) -> Result<Served> {
    spec.check_file_overlay()?;
    let Some(Overlay::File(file)) = &spec.overlay else {
        return open(spec);
    };
    let base = &spec.images[0];
    let (format, size) = {
        let served = open_piece(std::slice::from_ref(base), &spec.options, None, None)?;
        (served.format, served.image.virtual_size())
    };
    qcow2::create::create_overlay(file, base, format, size)?;
    tracing::info!(overlay = %file.display(), base = %base.display(), "created the overlay");
    open(spec).inspect_err(|_| {
        let _ = std::fs::remove_file(file);
    })
}

/// Opens the existing overlay `file` over the image `base` writable; `base` may be a
/// block device (the user gave it), which a backing name otherwise may not be.
fn open_overlay_file(file: &Path, base: &Path, options: &OpenOptions) -> Result<Served> {
    let options = OpenOptions {
        format: Some(Format::Qcow2),
        writable: true,
        user_paths: vec![base.to_path_buf()],
        ..options.clone()
    };
    open_piece(&[file.to_path_buf()], &options, None, None)
}
