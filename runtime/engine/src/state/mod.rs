//! State: one key's state of one operator ([`Entity`]), its undo journal
//! and its stored record, and the state directory ([`Store`]) that keeps
//! every record and the checkpoint metadata in one redb database.
//!
//! # Layout
//!
//! - [`entity`]: [`Entity`], [`Undo`], the record encoding and its
//!   checksum.
//! - [`store`]: the redb state directory: open and verify, checkpoints,
//!   kept components, file-safety helpers.

mod entity;
mod store;

pub use entity::{
    check_record, item_size, record_json, spilled_maps, value_json, CorruptRecord, Entity, Field,
    List, ListRows, Map, MapRows, MapSpill, Name, Spill, Undo, RECORD_OVERHEAD, SPILL_BYTES,
    SPILL_ITEMS, UNSPILL_ITEMS,
};
pub use store::{
    component_hash, component_hash_of, create_private_dir, euid, is_short_version_id,
    legacy_component_hash, read_regular_file, unsafe_reason, ChangelogTimer, ChangelogWrite,
    Checkpoint, FreeSpace, Reader, SnapshotError, SnapshotReport, SnapshotSource, SourcePos,
    StateWrite, Store, StoreError, TimerWrite, Writes, CHANGELOG_STATE, CHANGELOG_TIMER,
    MAX_COMPONENT_BYTES, SHORT_VERSION_ID_LEN, VERSION_ID_LEN,
};
