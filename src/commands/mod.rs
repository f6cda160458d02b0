//! `/wa …` commands: the pure parser ([`parser`]), the create form ([`form`]) and, later, the
//! router that checks rights and calls the groups service.

pub mod form;
pub mod parser;

pub use parser::{COMMANDS, Command, ParseError, Segment, parse, usage};
