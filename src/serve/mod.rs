//! Serving a device, between the commands (`cli/`) and the ublk plumbing (`ublk/`): a
//! typed description of what to serve ([`ServeSpec`]), opening it ([`open()`]), and
//! running it in this process or a daemon ([`launch`]) with its record kept while it is
//! live. `attach` builds a spec from its options and `recover` from a device's record;
//! library users can serve a device the same way.

pub mod open;
pub mod run;
pub mod spec;

pub use open::{
    check_selection, create_overlay_and_open, discover_with, open, open_piece, select, unlock,
    Served,
};
pub use run::{launch, Launched};
pub use spec::{LuksKey, Overlay, ServeSpec};
