//! The router of room messages: a message is a `/wa` command or chat for the relay. Commands
//! are checked, read live what they need from the pod ([`LiveReads`]: a room's owners, its
//! attachments, people's names) before the decision's transaction, then decided in it.

use std::sync::Arc;

use crate::commands::{self, Command};
use crate::domain::{Origin, StreamId, UserId};
use crate::effects::Effect;
use crate::events::ReceivedMessage;
use crate::groups::service::{GroupService, InfoExtras, Manage, NewGroup, Requester, ServiceError};
use crate::metrics::Metrics;
use crate::relay::RelayService;
use crate::store::{GroupRepo, Store, StoreError};
use crate::templates::{TemplateError, Templates};

/// Why a command could not be decided now.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The pod could not be read (`retryable`: it may work later).
    #[error("the pod could not be read: {message}")]
    Live { retryable: bool, message: String },
    /// The message's PresentationML cannot be read.
    #[error("unreadable message: {0}")]
    Unreadable(String),
}

/// A live read failed.
#[derive(Debug, Clone)]
pub struct LiveError {
    pub retryable: bool,
    pub message: String,
}

impl From<LiveError> for CommandError {
    fn from(e: LiveError) -> Self {
        CommandError::Live { retryable: e.retryable, message: e.message }
    }
}

/// What commands read live from the pod (never from a cache): implemented by the Symphony
/// client, faked in tests.
pub trait LiveReads: Send + Sync {
    /// The room's current owners.
    fn room_owners(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Vec<UserId>, LiveError>> + Send;
    /// The room's attachments (every page).
    fn attachments(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Vec<crate::events::symphony::AttachmentInfo>, LiveError>> + Send;
    /// A user's display name, if the pod knows the user.
    fn display_name(
        &self,
        user: UserId,
    ) -> impl Future<Output = Result<Option<String>, LiveError>> + Send;
}

impl LiveReads for crate::symphony::SymphonyClient {
    async fn room_owners(&self, stream: &StreamId) -> Result<Vec<UserId>, LiveError> {
        let members = self.room_members(stream).await.map_err(live)?;
        Ok(members.into_iter().filter(|m| m.owner).map(|m| m.user).collect())
    }

    async fn attachments(
        &self,
        stream: &StreamId,
    ) -> Result<Vec<crate::events::symphony::AttachmentInfo>, LiveError> {
        self.stream_attachments(stream).await.map_err(live)
    }

    async fn display_name(&self, user: UserId) -> Result<Option<String>, LiveError> {
        Ok(self.user_by_id(user).await.map_err(live)?.and_then(|u| u.display_name))
    }
}

fn live(e: crate::symphony::SymphonyError) -> LiveError {
    LiveError { retryable: e.is_retryable(), message: e.to_string() }
}

/// A room message as understood before its decision: the command (or chat) and what was read
/// live for it.
#[derive(Debug, Clone)]
pub struct Prepared {
    parsed: Result<Option<Command>, commands::ParseError>,
    /// The room's live owners, for a management command in a group's room.
    owners: Option<Vec<UserId>>,
    /// What `/wa info` shows that only the pod knows.
    extras: InfoExtras,
}

impl Prepared {
    /// The command it is (`invalid` when it does not parse), for the metrics once decided;
    /// `None` for chat.
    pub fn command_name(&self) -> Option<&'static str> {
        match &self.parsed {
            Ok(Some(command)) => Some(command.name()),
            Err(_) => Some("invalid"),
            Ok(None) => None,
        }
    }
}

/// Routes room messages.
pub struct CommandRouter {
    pub templates: Arc<Templates>,
    pub groups: Arc<GroupService>,
    pub relay: Arc<RelayService>,
    pub bot: UserId,
    pub metrics: Metrics,
}

impl CommandRouter {
    /// Whether a message is the bot's own (never reacted to).
    pub fn is_own(&self, message: &ReceivedMessage, initiator: Option<UserId>) -> bool {
        message.sender == self.bot || initiator == Some(self.bot)
    }

    /// Parses the message and reads live what its command needs. Nothing is written.
    pub async fn prepare<L: LiveReads>(
        &self,
        live: &L,
        store: &Store,
        message: &ReceivedMessage,
    ) -> Result<Prepared, CommandError> {
        let mut prepared = self.parse(message)?;
        let Ok(Some(command)) = &prepared.parsed else { return Ok(prepared) };
        if !reads_live(command) {
            return Ok(prepared);
        }
        let group = store.read(|r| r.group_by_stream(&message.stream))?;
        let Some(group) = group else { return Ok(prepared) }; // the service says where to go
        match command {
            Command::Info => {
                prepared.extras.attachments = live.attachments(&message.stream).await?;
                let mut people: Vec<UserId> =
                    store.read(|r| r.advisors(group.key))?.into_iter().map(|(u, _)| u).collect();
                people.extend(prepared.extras.attachments.iter().filter_map(|a| a.user_id));
                people.sort();
                people.dedup();
                for user in people {
                    if let Some(name) = live.display_name(user).await? {
                        prepared.extras.names.insert(user, name);
                    }
                }
            }
            Command::Rename { .. }
            | Command::Add { .. }
            | Command::Remove { .. }
            | Command::Promote { .. }
            | Command::Demote { .. }
            | Command::Invite { .. } => {
                // Ownership is checked against the pod's live membership, never a cache.
                prepared.owners = Some(live.room_owners(&message.stream).await?);
            }
            Command::Help | Command::CreateForm | Command::Create { .. } => {}
        }
        Ok(prepared)
    }

    /// [`prepare`](Self::prepare) when it reads nothing live, through `repo` (the transaction
    /// that stores the message); `None` when the command needs a live read (a room's owners,
    /// the people of `/wa info`) in a room with a group.
    pub fn prepare_offline(
        &self,
        repo: &dyn GroupRepo,
        message: &ReceivedMessage,
    ) -> Result<Option<Prepared>, CommandError> {
        let prepared = self.parse(message)?;
        let Ok(Some(command)) = &prepared.parsed else { return Ok(Some(prepared)) };
        let offline = !reads_live(command) || repo.group_by_stream(&message.stream)?.is_none();
        Ok(offline.then_some(prepared))
    }

    /// The message parsed; nothing read.
    fn parse(&self, message: &ReceivedMessage) -> Result<Prepared, CommandError> {
        let segments =
            crate::symphony::messageml::parse(&message.presentation_ml, message.data.as_deref())
                .map_err(|e| CommandError::Unreadable(e.to_string()))?
                .segments;
        let parsed = commands::parse(&segments, self.bot);
        Ok(Prepared { parsed, owners: None, extras: InfoExtras::default() })
    }

    /// Decides a prepared message in the event's transaction.
    pub fn decide(
        &self,
        tx: &dyn GroupRepo,
        event_id: &str,
        message: &ReceivedMessage,
        prepared: Prepared,
    ) -> Result<Vec<Effect>, CommandError> {
        tracing::debug!(event = event_id, stream = %message.stream, command = ?prepared.command_name(), "a room message decided");
        let who = Requester {
            user: message.sender,
            email: message.sender_email.clone(),
            stream: message.stream.clone(),
        };
        let reply = |message_ml: String| {
            Ok(vec![Effect::PostMessage { stream: message.stream.clone(), message_ml }])
        };
        let manage = match prepared.parsed {
            Ok(None) => return Ok(self.relay.from_room(tx, message)?),
            Ok(Some(Command::Help)) => return reply(self.templates.help(commands::COMMANDS)?),
            Ok(Some(Command::CreateForm)) => {
                let form = commands::form::CreateForm::default();
                return reply(commands::form::render_create_form(&self.templates, &form, &[])?);
            }
            Ok(Some(Command::Create { name, advisors, contacts, standard })) => {
                let origin = Origin { key: event_id.to_owned(), event: event_id.to_owned() };
                return Ok(self.groups.create(
                    tx,
                    &who,
                    NewGroup { name: &name, advisors: &advisors, contacts: &contacts, standard },
                    &origin,
                )?);
            }
            Ok(Some(Command::Info)) => Manage::Info(prepared.extras),
            Ok(Some(Command::Rename { name })) => Manage::Rename(name),
            Ok(Some(Command::Add { advisors, contacts })) => Manage::Add { advisors, contacts },
            Ok(Some(Command::Remove { advisors, contacts })) => {
                Manage::Remove { advisors, contacts }
            }
            Ok(Some(Command::Promote { advisor })) => Manage::Promote(advisor),
            Ok(Some(Command::Demote { advisor })) => Manage::Demote(advisor),
            Ok(Some(Command::Invite { contacts })) => Manage::Invite(contacts),
            Err(e) => return reply(self.templates.usage(&e.to_string(), e.usage())?),
        };
        Ok(self.groups.manage(tx, &who, manage, prepared.owners.as_deref())?)
    }
}

/// Whether a command reads the pod live before it is decided (in a room with a group): `/wa info`
/// its files and people, the owners' commands the room's live owners.
fn reads_live(command: &Command) -> bool {
    !matches!(command, Command::Help | Command::CreateForm | Command::Create { .. })
}
