//! `/wa …` commands: the pure parser ([`parser`]), the create form ([`form`]) and the
//! [`router`] that checks rights, reads live what a command needs and calls the services.

pub mod form;
pub mod parser;
pub mod router;

pub use parser::{COMMANDS, Command, ParseError, Segment, parse, usage};
