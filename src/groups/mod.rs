//! Groups: the domain vocabulary every module shares ([`model`]: validated ids, the group
//! aggregate as stored, what goes to WhatsApp), the product's rules (pure), and the lifecycle
//! decisions ([`service`]).

pub mod model;
pub mod rules;
pub mod service;

pub use model::{
    ContactRecord, ContactState, Created, E164, E164Error, GroupId, GroupKey, GroupKind,
    GroupRecord, GroupState, Origin, Recipient, StreamId, TemplateParam, UserId, WaMessageRecord,
};
