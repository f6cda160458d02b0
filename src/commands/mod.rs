//! `/wa …` commands: parsing and replies.
