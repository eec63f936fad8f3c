//! What a tree holds, as InterSync sees it: the [`TreeState`] built by
//! replaying the KML, and scanning a folder for changes against it.

pub mod scan;
pub mod state;

pub use state::{Entry, EntryKind, InOrder, TreeError, TreeState, Undo};
