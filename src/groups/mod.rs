//! Groups: the product's rules (pure) and the lifecycle decisions ([`service`]), over the
//! domain vocabulary of [`crate::domain`] (validated ids, the group aggregate, what goes to
//! WhatsApp).

pub mod rules;
pub mod service;

/// The domain vocabulary lives in [`crate::domain`]; it is re-exported here for callers that
/// know it by this path.
pub use crate::domain as model;
pub use crate::domain::{
    BusinessNumber, ContactRecord, ContactState, Created, E164, E164Error, GroupId, GroupKey,
    GroupKind, GroupRecord, GroupState, Origin, Recipient, StreamId, TemplateParam, UserId,
    WaMessageRecord,
};
