//! Groups: the validated id newtypes shared by every module, and (later) the group rules.

pub mod model;

pub use model::{E164, E164Error, GroupId, StreamId, UserId};
