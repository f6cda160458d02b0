//! Groups: the validated id newtypes shared by every module, and the product's rules (pure).

pub mod model;
pub mod rules;
pub mod service;

pub use model::{
    ContactRecord, ContactState, Created, E164, E164Error, GroupId, GroupKey, GroupKind,
    GroupRecord, GroupState, Origin, StreamId, UserId, WaMessageRecord,
};
