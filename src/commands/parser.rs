//! Pure parsing of `/wa …` commands: a message (text segments and mentions) → [`Command`].
//!
//! A message is a command when its first word is `/wa`, optionally after an @mention of the bot.
//! Arguments are double-quoted strings (with `\"` escapes), mentions (matched by user id, never
//! by display name), E.164 phone numbers and the `--standard` flag.

use crate::domain::{E164, UserId};

pub use crate::markup::Segment;

/// Longest room name / WhatsApp subject.
pub use crate::domain::MAX_NAME_CHARS;

/// A parsed `/wa` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    /// `/wa create` with no arguments: answer with the create form.
    CreateForm,
    Create {
        name: String,
        advisors: Vec<UserId>,
        contacts: Vec<E164>,
        standard: bool,
    },
    Info,
    Rename {
        name: String,
    },
    Add {
        advisors: Vec<UserId>,
        contacts: Vec<E164>,
    },
    Remove {
        advisors: Vec<UserId>,
        contacts: Vec<E164>,
    },
    Promote {
        advisor: UserId,
    },
    Demote {
        advisor: UserId,
    },
    Invite {
        contacts: Vec<E164>,
    },
}

/// The commands, their usage lines and what they do: the single source of `/wa help`.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("help", "/wa help", "list the commands"),
    (
        "create",
        "/wa create \"<name>\" [@advisor …] [+E164 …] [--standard]",
        "create a room and its WhatsApp group (no arguments: a form)",
    ),
    ("info", "/wa info", "show the group: owners, advisors, contacts and their state"),
    ("rename", "/wa rename \"<name>\"", "rename the room and the WhatsApp group (owners)"),
    ("add", "/wa add @advisor|+E164 …", "add advisors or invite contacts (owners)"),
    (
        "remove",
        "/wa remove @advisor|+E164 …",
        "remove advisors or contacts; contacts are barred (owners)",
    ),
    ("promote", "/wa promote @advisor", "make an advisor a room owner (owners)"),
    ("demote", "/wa demote @advisor", "make an owner a plain member (owners)"),
    ("invite", "/wa invite +E164 …", "send a contact their invitation again (owners)"),
];

impl Command {
    /// The command's name as `/wa help` lists it (metrics label it so).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Help => "help",
            Command::CreateForm | Command::Create { .. } => "create",
            Command::Info => "info",
            Command::Rename { .. } => "rename",
            Command::Add { .. } => "add",
            Command::Remove { .. } => "remove",
            Command::Promote { .. } => "promote",
            Command::Demote { .. } => "demote",
            Command::Invite { .. } => "invite",
        }
    }
}

/// The usage line of a command (`None` for an unknown name).
pub fn usage(command: &str) -> Option<&'static str> {
    COMMANDS.iter().find(|(name, _, _)| *name == command).map(|(_, usage, _)| *usage)
}

/// Why a `/wa` message is not a valid command. Every variant names the command so the reply
/// can show its usage line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("{problem}")]
    BadArguments { command: &'static str, problem: String },
}

impl ParseError {
    /// The usage line to show with the error (`/wa help` for an unknown command).
    pub fn usage(&self) -> &'static str {
        match self {
            ParseError::UnknownCommand(_) => "/wa help",
            ParseError::BadArguments { command, .. } => usage(command).unwrap_or("/wa help"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A bare word.
    Word(String),
    /// A double-quoted string (quotes removed, escapes applied).
    Quoted(String),
    Mention(UserId),
}

/// Splits the message into tokens. Tags never split words (as the BDK tokenizer); mentions do.
fn tokenize(segments: &[Segment]) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut in_quotes = false;
    for segment in segments {
        match segment {
            Segment::Mention { user, text } => {
                if in_quotes {
                    word.push_str(text);
                } else {
                    if !word.is_empty() {
                        tokens.push(Token::Word(std::mem::take(&mut word)));
                    }
                    tokens.push(Token::Mention(*user));
                }
            }
            Segment::Text(text) => {
                let mut chars = text.chars().peekable();
                while let Some(c) = chars.next() {
                    if in_quotes {
                        match c {
                            '\\' if matches!(chars.peek(), Some('"' | '\\')) => {
                                word.extend(chars.next());
                            }
                            '"' => {
                                in_quotes = false;
                                tokens.push(Token::Quoted(std::mem::take(&mut word)));
                            }
                            _ => word.push(c),
                        }
                    } else if c == '"' && word.is_empty() {
                        in_quotes = true;
                    } else if c.is_whitespace() {
                        if !word.is_empty() {
                            tokens.push(Token::Word(std::mem::take(&mut word)));
                        }
                    } else {
                        word.push(c);
                    }
                }
            }
        }
    }
    if in_quotes {
        return Err("a quoted name is not closed (missing \")".into());
    }
    if !word.is_empty() {
        tokens.push(Token::Word(word));
    }
    Ok(tokens)
}

/// Parses a message. `Ok(None)`: not a command (relay it or ignore it). `bot` is the bot's own
/// user id: a leading mention of the bot is allowed before `/wa`.
pub fn parse(segments: &[Segment], bot: UserId) -> Result<Option<Command>, ParseError> {
    let tokens = match tokenize(segments) {
        Ok(tokens) => tokens,
        Err(problem) => {
            // Only a /wa message gets an error back; anything else is not a command.
            let starts_with_wa = segments.iter().find_map(|s| match s {
                Segment::Text(t) if !t.trim().is_empty() => Some(t.trim_start().starts_with("/wa")),
                Segment::Text(_) => None,
                Segment::Mention { user, .. } => (*user != bot).then_some(false),
            });
            if starts_with_wa == Some(true) {
                let command = segments
                    .iter()
                    .find_map(|s| match s {
                        Segment::Text(t) => t.split_whitespace().nth(1).map(str::to_owned),
                        Segment::Mention { .. } => None,
                    })
                    .and_then(|name| {
                        COMMANDS.iter().find(|(n, _, _)| *n == name).map(|(n, _, _)| *n)
                    })
                    .unwrap_or("help");
                return Err(ParseError::BadArguments { command, problem });
            }
            return Ok(None);
        }
    };
    let mut rest = tokens.as_slice();
    if let [Token::Mention(user), tail @ ..] = rest
        && *user == bot
    {
        rest = tail;
    }
    let [Token::Word(prefix), tail @ ..] = rest else { return Ok(None) };
    if prefix != "/wa" {
        return Ok(None);
    }
    let Some((name, args)) = tail.split_first() else { return Ok(Some(Command::Help)) };
    let name = match name {
        Token::Word(w) => w.to_lowercase(),
        Token::Quoted(q) => return Err(ParseError::UnknownCommand(q.clone())),
        Token::Mention(_) => return Err(ParseError::UnknownCommand("@mention".into())),
    };
    parse_command(&name, args).map(Some)
}

fn bad(command: &'static str, problem: impl Into<String>) -> ParseError {
    ParseError::BadArguments { command, problem: problem.into() }
}

fn parse_command(name: &str, args: &[Token]) -> Result<Command, ParseError> {
    match name {
        "help" => no_args("help", args).map(|()| Command::Help),
        "info" => no_args("info", args).map(|()| Command::Info),
        "create" => parse_create(args),
        "rename" => match args {
            [Token::Quoted(n) | Token::Word(n)] => {
                Ok(Command::Rename { name: valid_name("rename", n)? })
            }
            [] => Err(bad("rename", "the new name is missing")),
            _ => Err(bad("rename", "put a name with spaces in double quotes")),
        },
        "add" | "remove" => {
            let command = if name == "add" { "add" } else { "remove" };
            let (advisors, contacts) = people(command, args)?;
            if advisors.is_empty() && contacts.is_empty() {
                return Err(bad(command, "name at least one @advisor or +E164 number"));
            }
            Ok(if command == "add" {
                Command::Add { advisors, contacts }
            } else {
                Command::Remove { advisors, contacts }
            })
        }
        "promote" | "demote" => {
            let command = if name == "promote" { "promote" } else { "demote" };
            match args {
                [Token::Mention(advisor)] => Ok(if command == "promote" {
                    Command::Promote { advisor: *advisor }
                } else {
                    Command::Demote { advisor: *advisor }
                }),
                [] => Err(bad(command, "@mention the advisor")),
                _ => Err(bad(command, "expected exactly one @mention of an advisor")),
            }
        }
        "invite" => {
            let (advisors, contacts) = people("invite", args)?;
            if !advisors.is_empty() {
                return Err(bad(
                    "invite",
                    "invite takes WhatsApp numbers only; use /wa add for advisors",
                ));
            }
            if contacts.is_empty() {
                return Err(bad("invite", "name at least one +E164 number"));
            }
            Ok(Command::Invite { contacts })
        }
        other => Err(ParseError::UnknownCommand(other.to_owned())),
    }
}

fn no_args(command: &'static str, args: &[Token]) -> Result<(), ParseError> {
    if args.is_empty() {
        Ok(())
    } else {
        Err(bad(command, format!("{command} takes no arguments")))
    }
}

fn valid_name(command: &'static str, raw: &str) -> Result<String, ParseError> {
    checked_name(raw).map_err(|problem| bad(command, problem))
}

/// A group name, trimmed, or why it is refused: the rule of every command and of the create
/// form.
pub(super) fn checked_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    let chars = name.chars().count();
    if chars == 0 {
        return Err("the name is empty".into());
    }
    if chars > MAX_NAME_CHARS {
        return Err(format!(
            "the name has {chars} characters; at most {MAX_NAME_CHARS} are allowed"
        ));
    }
    Ok(name.to_owned())
}

/// How a WhatsApp number is written, for error messages.
pub(super) const NUMBER_HINT: &str = "E.164, e.g. +447911123456";

/// Adds `number` to `numbers` unless it is there already (duplicates folded, order kept).
pub(super) fn push_number(numbers: &mut Vec<E164>, number: E164) {
    if !numbers.contains(&number) {
        numbers.push(number);
    }
}

/// Mentions and phone numbers, duplicates folded, order kept.
fn people(command: &'static str, args: &[Token]) -> Result<(Vec<UserId>, Vec<E164>), ParseError> {
    let mut advisors = Vec::new();
    let mut contacts = Vec::new();
    let mut bad_numbers = Vec::new();
    for arg in args {
        match arg {
            Token::Mention(user) => {
                if !advisors.contains(user) {
                    advisors.push(*user);
                }
            }
            Token::Word(w) | Token::Quoted(w) => match E164::parse(w) {
                Ok(n) => push_number(&mut contacts, n),
                Err(_) => bad_numbers.push(w.clone()),
            },
        }
    }
    if !bad_numbers.is_empty() {
        let list = bad_numbers.iter().map(|b| format!("{b:?}")).collect::<Vec<_>>().join(", ");
        return Err(bad(
            command,
            format!("not a valid WhatsApp number ({NUMBER_HINT}) or @mention: {list}"),
        ));
    }
    Ok((advisors, contacts))
}

fn parse_create(args: &[Token]) -> Result<Command, ParseError> {
    let Some((first, rest)) = args.split_first() else { return Ok(Command::CreateForm) };
    let name = match first {
        Token::Quoted(n) => valid_name("create", n)?,
        Token::Word(w) if !w.starts_with('+') && !w.starts_with("--") => valid_name("create", w)?,
        _ => return Err(bad("create", "the group name comes first, in double quotes")),
    };
    let mut standard = false;
    let mut people_args = Vec::new();
    for arg in rest {
        match arg {
            Token::Word(w) if w == "--standard" => standard = true,
            Token::Word(w) if w.starts_with("--") => {
                return Err(bad("create", format!("unknown option {w:?} (only --standard)")));
            }
            other => people_args.push(other.clone()),
        }
    }
    let (advisors, contacts) = people("create", &people_args)?;
    Ok(Command::Create { name, advisors, contacts, standard })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT: UserId = UserId(1);
    const BOB: UserId = UserId(42);

    fn text(t: &str) -> Segment {
        Segment::Text(t.into())
    }

    fn mention(user: UserId) -> Segment {
        Segment::Mention { user, text: format!("@User {user}") }
    }

    fn n(s: &str) -> E164 {
        E164::parse(s).expect("valid number")
    }

    #[test]
    fn table_of_valid_commands() {
        let cases: Vec<(Vec<Segment>, Command)> = vec![
            (vec![text("/wa help")], Command::Help),
            (vec![text("/wa")], Command::Help),
            (vec![mention(BOT), text(" /wa help")], Command::Help),
            (vec![text("/wa create")], Command::CreateForm),
            (
                vec![
                    text("/wa create \"Deal team\" "),
                    mention(BOB),
                    text(" +447911123456 +447911123457"),
                ],
                Command::Create {
                    name: "Deal team".into(),
                    advisors: vec![BOB],
                    contacts: vec![n("+447911123456"), n("+447911123457")],
                    standard: false,
                },
            ),
            (
                vec![text("/wa create \"Say \\\"hi\\\"\" +447911123456 --standard +447911123456")],
                Command::Create {
                    name: "Say \"hi\"".into(),
                    advisors: vec![],
                    contacts: vec![n("+447911123456")],
                    standard: true,
                },
            ),
            (
                vec![text("/wa create Solo")],
                Command::Create {
                    name: "Solo".into(),
                    advisors: vec![],
                    contacts: vec![],
                    standard: false,
                },
            ),
            (vec![text("/wa info")], Command::Info),
            (vec![text("/wa RENAME \"  New name \"")], Command::Rename { name: "New name".into() }),
            (
                vec![text("/wa add "), mention(BOB), text(" 447911123456 "), mention(BOB)],
                Command::Add { advisors: vec![BOB], contacts: vec![n("+447911123456")] },
            ),
            (
                vec![text("/wa remove +447911123456")],
                Command::Remove { advisors: vec![], contacts: vec![n("+447911123456")] },
            ),
            (vec![text("/wa promote "), mention(BOB)], Command::Promote { advisor: BOB }),
            (vec![text("/wa demote "), mention(BOB)], Command::Demote { advisor: BOB }),
            (
                vec![text("/wa invite +447911123456")],
                Command::Invite { contacts: vec![n("+447911123456")] },
            ),
        ];
        for (input, expected) in cases {
            let name = expected.name();
            assert!(usage(name).is_some(), "{name} (the metrics label) is listed in COMMANDS");
            assert_eq!(parse(&input, BOT), Ok(Some(expected)), "{input:?}");
        }
    }

    #[test]
    fn not_commands() {
        for input in [
            vec![text("hello /wa help")],
            vec![text("/wave hello")],
            vec![mention(BOB), text(" /wa help")],
            vec![text("")],
            vec![text("\"unclosed quote in chat")],
        ] {
            assert_eq!(parse(&input, BOT), Ok(None), "{input:?}");
        }
    }

    #[test]
    fn table_of_errors_with_usage_lines() {
        let cases: Vec<(Vec<Segment>, &str, &str)> = vec![
            (vec![text("/wa frobnicate")], "unknown command", "/wa help"),
            (vec![text("/wa help me")], "takes no arguments", "/wa help"),
            (vec![text("/wa rename")], "name is missing", "/wa rename \"<name>\""),
            (vec![text("/wa rename \"\"")], "name is empty", "/wa rename \"<name>\""),
            (vec![text("/wa rename \"unclosed")], "not closed", "/wa rename \"<name>\""),
            (vec![text("/wa add")], "at least one", "/wa add @advisor|+E164 …"),
            (vec![text("/wa add +12")], "\"+12\"", "/wa add @advisor|+E164 …"),
            (vec![text("/wa add bob")], "\"bob\"", "/wa add @advisor|+E164 …"),
            (vec![text("/wa add +44 7911 123457")], "\"7911\"", "/wa add @advisor|+E164 …"),
            (vec![text("/wa promote")], "@mention", "/wa promote @advisor"),
            (vec![text("/wa promote +447911123456")], "exactly one", "/wa promote @advisor"),
            (vec![text("/wa invite "), mention(BOB)], "numbers only", "/wa invite +E164 …"),
            (vec![text("/wa create +447911123456")], "name comes first", "/wa create"),
            (vec![text("/wa create \"x\" --native")], "unknown option", "/wa create"),
        ];
        for (input, problem, usage_start) in cases {
            let err = parse(&input, BOT).expect_err(&format!("{input:?}"));
            assert!(err.to_string().contains(problem), "{input:?}: {err}");
            assert!(err.usage().starts_with(usage_start), "{input:?}: {}", err.usage());
        }
        let long = format!("/wa create \"{}\"", "x".repeat(129));
        let err = parse(&[text(&long)], BOT).expect_err("too long");
        assert!(err.to_string().contains("129 characters"), "{err}");
        assert!(parse(&[text(&format!("/wa create \"{}\"", "é".repeat(128)))], BOT).is_ok());
    }
}
