//! What each event means: which key it is decided under ([`Decider::route`]), what must be
//! read live first ([`Decider::prepare`], outside any transaction), and the decision itself
//! ([`Decider::decide`], inside the event's transaction: state changes and effects together).

use std::sync::Arc;

use crate::commands::router::{
    CommandError, CommandRouter, LiveReads, Prepared as MessagePrepared,
};
use crate::commands::{self};
use crate::domain::{GroupKey, Origin, StreamId};
use crate::effects::{Effect, Outcome};
use crate::events::{InboundEvent, SymphonyEvent, SymphonyEventKind, WhatsAppEvent};
use crate::groups::service::{GroupService, NewGroup, Requester, ServiceError};
use crate::relay::{RelayService, WaInbound};
use crate::store::{GroupRepo, InboundRow, Source, Store, StoreError};
use crate::templates::{TemplateError, Templates};

/// Why an event could not be decided now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// It came before what it refers to (a webhook faster than the answer that records it):
    /// tried again shortly, for a while.
    #[error("not yet: {0}")]
    NotYet(String),
    /// Worth trying again (the store was busy, the pod could not be read).
    #[error("{0}")]
    Transient(String),
    /// Will fail the same way every time (a template that does not render, an unreadable
    /// event): set aside at once.
    #[error("{0}")]
    Permanent(String),
    /// This instance lost its claim on the event's key (it stalled past the claim's expiry and
    /// another instance took the key over): nothing is written, the new holder decides it.
    #[error("the claim on this event's key was lost to another instance")]
    Fenced,
}

impl From<StoreError> for DecideError {
    fn from(e: StoreError) -> Self {
        match e {
            // A payload that does not decode never will.
            StoreError::Payload(_) => DecideError::Permanent(e.to_string()),
            other => DecideError::Transient(other.to_string()),
        }
    }
}

impl From<TemplateError> for DecideError {
    fn from(e: TemplateError) -> Self {
        DecideError::Permanent(e.to_string())
    }
}

impl From<ServiceError> for DecideError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotYet(reason) => DecideError::NotYet(reason),
            ServiceError::Store(e) => e.into(),
            ServiceError::Template(e) => e.into(),
        }
    }
}

impl From<CommandError> for DecideError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Service(e) => e.into(),
            CommandError::Store(e) => e.into(),
            CommandError::Template(e) => e.into(),
            CommandError::Live { retryable: true, message } => DecideError::Transient(message),
            CommandError::Live { retryable: false, message } => DecideError::Permanent(message),
            CommandError::Unreadable(m) => DecideError::Permanent(m),
        }
    }
}

impl From<serde_json::Error> for DecideError {
    fn from(e: serde_json::Error) -> Self {
        DecideError::Permanent(e.to_string())
    }
}

/// An inbound event, decoded.
#[derive(Debug, Clone)]
pub enum Event {
    Inbound(InboundEvent),
    Outcome(Outcome),
}

impl Event {
    /// Decodes a stored event.
    pub fn decode(row: &InboundRow) -> Result<Self, DecideError> {
        let undecodable =
            |e: serde_json::Error| DecideError::Permanent(format!("undecodable stored event: {e}"));
        Ok(match row.source {
            Source::Outcome => {
                Event::Outcome(serde::Deserialize::deserialize(&row.payload).map_err(undecodable)?)
            }
            Source::Symphony | Source::WhatsApp => {
                Event::Inbound(serde::Deserialize::deserialize(&row.payload).map_err(undecodable)?)
            }
        })
    }
}

/// Where an event is decided (events of one key in order, keys in parallel) and which room
/// hears of it if it has to be set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub key: String,
    pub stream: Option<StreamId>,
    /// What the event is, as people are told ("a message", "a join request").
    pub what: &'static str,
}

/// What was read live for an event, before its transaction.
#[derive(Debug, Clone)]
pub enum Prepared {
    Nothing,
    Message(Box<MessagePrepared>),
}

impl Prepared {
    /// The command a message is, if it is one (counted once its decision commits).
    pub fn command_name(&self) -> Option<&'static str> {
        match self {
            Prepared::Message(message) => message.command_name(),
            Prepared::Nothing => None,
        }
    }
}

/// Decides events.
pub struct Decider<L> {
    pub router: CommandRouter,
    pub groups: Arc<GroupService>,
    pub relay: Arc<RelayService>,
    pub templates: Arc<Templates>,
    /// Live reads (a room's owners, attachments, names).
    pub live: L,
}

impl<L: LiveReads> Decider<L> {
    /// The key of an event: its group's when the group is known (so that a group's events are
    /// decided in order whichever side they come from), else its stream, chat or message.
    pub fn route(&self, store: &Store, event: &Event) -> Route {
        let group_of_stream = |stream: &StreamId, what| {
            let group = store.read(|r| r.group_by_stream(stream)).ok().flatten();
            Route {
                key: group.map_or_else(|| format!("stream:{stream}"), |g| group_key(g.key)),
                stream: Some(stream.clone()),
                what,
            }
        };
        let group_of = |key: GroupKey, what| {
            let stream = store.read(|r| r.group(key)).ok().flatten().and_then(|g| g.stream);
            Route { key: group_key(key), stream, what }
        };
        let group_of_wa = |wa: &crate::domain::GroupId, what| match store
            .read(|r| r.group_by_wa(wa))
            .ok()
            .flatten()
        {
            Some(g) => Route { key: group_key(g.key), stream: g.stream, what },
            None => Route { key: format!("wa:{wa}"), stream: None, what },
        };
        match event {
            Event::Inbound(InboundEvent::Symphony(e)) => match &e.kind {
                SymphonyEventKind::MessageSent(m) => group_of_stream(&m.stream, "a message"),
                SymphonyEventKind::ElementsAction { stream, .. } => {
                    group_of_stream(stream, "a form submission")
                }
                SymphonyEventKind::RoomUpdated { stream, .. }
                | SymphonyEventKind::RoomDeactivated { stream }
                | SymphonyEventKind::RoomReactivated { stream }
                | SymphonyEventKind::UserJoinedRoom { stream, .. }
                | SymphonyEventKind::UserLeftRoom { stream, .. }
                | SymphonyEventKind::MemberPromotedToOwner { stream, .. }
                | SymphonyEventKind::MemberDemotedFromOwner { stream, .. }
                | SymphonyEventKind::RoomCreated { stream, .. }
                | SymphonyEventKind::InstantMessageCreated { stream } => {
                    group_of_stream(stream, "a change to the room")
                }
                SymphonyEventKind::Other { .. } => {
                    Route { key: "housekeeping".into(), stream: None, what: "an event" }
                }
            },
            Event::Inbound(InboundEvent::WhatsApp(e)) => match e {
                WhatsAppEvent::GroupCreated { request_id: Some(r), group_id, .. } => {
                    match store.read(|s| s.group_by_request(r)).ok().flatten() {
                        Some(g) => group_of(g.key, "the WhatsApp group's creation"),
                        None => group_of_wa(group_id, "the WhatsApp group's creation"),
                    }
                }
                WhatsAppEvent::GroupCreateFailed { request_id: Some(r), .. } => {
                    match store.read(|s| s.group_by_request(r)).ok().flatten() {
                        Some(g) => group_of(g.key, "the WhatsApp group's creation"),
                        None => {
                            Route { key: format!("request:{r}"), stream: None, what: "an event" }
                        }
                    }
                }
                WhatsAppEvent::Message { group_id: None, from, .. } => {
                    let who =
                        from.wa_id.clone().or_else(|| from.user_id.clone()).unwrap_or_default();
                    Route { key: format!("chat:{who}"), stream: None, what: "a WhatsApp message" }
                }
                WhatsAppEvent::Status { message_id, .. } => {
                    match store.read(|s| s.wa_message(message_id)).ok().flatten() {
                        Some(m) => group_of(m.group, "a delivery status"),
                        None => Route {
                            key: format!("status:{message_id}"),
                            stream: None,
                            what: "a delivery status",
                        },
                    }
                }
                other => match other.group() {
                    Some(wa) => group_of_wa(wa, "a WhatsApp group event"),
                    None => Route { key: "housekeeping".into(), stream: None, what: "an event" },
                },
            },
            Event::Outcome(o) => match o {
                Outcome::RoomCreated { group, .. }
                | Outcome::WaGroupRequested { group, .. }
                | Outcome::WaGroupFound { group, .. } => group_of(*group, "the group's creation"),
                Outcome::InviteLinkReset { group, .. } => group_of_wa(group, "an invite link"),
                Outcome::FileNotSent { stream, .. } => group_of_stream(stream, "a file"),
                Outcome::DeliveryFailed { message_id, .. } => {
                    match store.read(|s| s.wa_message(message_id)).ok().flatten() {
                        Some(m) => group_of(m.group, "a delivery status"),
                        None => Route {
                            key: format!("status:{message_id}"),
                            stream: None,
                            what: "a delivery status",
                        },
                    }
                }
                Outcome::Failed { effect, .. } => match failed_effect_route(effect) {
                    FailedRoute::Group(key) => group_of(key, "a failure report"),
                    FailedRoute::Stream(stream) => group_of_stream(&stream, "a failure report"),
                    FailedRoute::Wa(wa) => group_of_wa(&wa, "a failure report"),
                },
                Outcome::WaGroupMissing { group } => group_of(*group, "the group's creation"),
            },
        }
    }

    /// Reads live what the decision needs (nothing is written).
    pub async fn prepare(&self, store: &Store, event: &Event) -> Result<Prepared, DecideError> {
        match event {
            Event::Inbound(InboundEvent::Symphony(SymphonyEvent {
                kind: SymphonyEventKind::MessageSent(message),
                initiator,
                ..
            })) if !self.router.is_own(message, *initiator) => {
                let prepared = self.router.prepare(&self.live, store, message).await?;
                Ok(Prepared::Message(Box::new(prepared)))
            }
            _ => Ok(Prepared::Nothing),
        }
    }

    /// [`prepare`](Self::prepare) without live reads, through `repo`; `None` when the event
    /// needs one.
    pub fn prepare_offline(
        &self,
        repo: &dyn GroupRepo,
        event: &Event,
    ) -> Result<Option<Prepared>, DecideError> {
        match event {
            Event::Inbound(InboundEvent::Symphony(SymphonyEvent {
                kind: SymphonyEventKind::MessageSent(message),
                initiator,
                ..
            })) if !self.router.is_own(message, *initiator) => Ok(self
                .router
                .prepare_offline(repo, message)?
                .map(|prepared| Prepared::Message(Box::new(prepared)))),
            _ => Ok(Some(Prepared::Nothing)),
        }
    }

    /// The decision: state changes through `tx`, effects returned (queued by the caller in the
    /// same transaction). `event_key` is the event's own id (a create's origin).
    pub fn decide(
        &self,
        tx: &dyn GroupRepo,
        event_key: &str,
        event: &Event,
        prepared: Prepared,
    ) -> Result<Vec<Effect>, DecideError> {
        match event {
            Event::Inbound(InboundEvent::Symphony(e)) => self.on_symphony(tx, e, prepared),
            Event::Inbound(InboundEvent::WhatsApp(e)) => self.on_whatsapp(tx, e),
            Event::Outcome(o) => self.on_outcome(tx, o),
        }
        .map_err(|e| {
            tracing::debug!(event = event_key, error = %e, "not decided");
            e
        })
    }

    fn on_whatsapp(
        &self,
        tx: &dyn GroupRepo,
        event: &WhatsAppEvent,
    ) -> Result<Vec<Effect>, DecideError> {
        let g = &self.groups;
        Ok(match event {
            WhatsAppEvent::GroupCreated {
                request_id: Some(r),
                group_id,
                invite_link,
                subject,
                ..
            } => g.on_group_created(tx, r, group_id, invite_link.as_deref(), subject.as_deref())?,
            WhatsAppEvent::GroupCreateFailed { request_id: Some(r), errors, .. } => {
                g.on_group_create_failed(tx, r, errors)?
            }
            WhatsAppEvent::JoinRequestCreated { group_id, join_request_id, user, .. } => {
                g.on_join_request(tx, group_id, join_request_id, user)?
            }
            WhatsAppEvent::JoinRequestRevoked { group_id, user, .. } => {
                g.on_join_request_revoked(tx, group_id, user)?
            }
            WhatsAppEvent::ParticipantsAdded { group_id, participants, .. } => {
                g.on_participants_added(tx, group_id, participants)?
            }
            WhatsAppEvent::ParticipantsRemoved {
                group_id, initiated_by, removed, failed, ..
            } => {
                g.on_participants_removed(tx, group_id, initiated_by.as_deref(), removed, failed)?
            }
            WhatsAppEvent::Message { .. } => match WaInbound::from_event(event) {
                Some(m) => self.relay.from_whatsapp(tx, m)?,
                None => Vec::new(),
            },
            WhatsAppEvent::GroupSuspended { group_id } => g.on_suspension(tx, group_id, true)?,
            WhatsAppEvent::GroupSuspendCleared { group_id } => {
                g.on_suspension(tx, group_id, false)?
            }
            WhatsAppEvent::Status { message_id, status, participant, errors, contact, .. } => {
                let mut effects = match contact {
                    Some(c) => g.on_profile(tx, c)?,
                    None => Vec::new(),
                };
                effects.extend(self.relay.on_status(
                    tx,
                    message_id,
                    status,
                    participant.as_ref(),
                    errors,
                    false,
                )?);
                effects
            }
            _ => Vec::new(),
        })
    }

    fn on_symphony(
        &self,
        tx: &dyn GroupRepo,
        event: &SymphonyEvent,
        prepared: Prepared,
    ) -> Result<Vec<Effect>, DecideError> {
        let g = &self.groups;
        let name = event.affected_name.as_deref();
        let bot = self.router.bot;
        Ok(match &event.kind {
            SymphonyEventKind::MessageSent(message) => match prepared {
                Prepared::Message(prepared) => {
                    self.router.decide(tx, &event.id, message, *prepared)?
                }
                // The bot's own message: never reacted to.
                Prepared::Nothing => Vec::new(),
            },
            SymphonyEventKind::RoomUpdated { stream, name: Some(new_name) } => {
                g.on_room_renamed(tx, stream, new_name)?
            }
            SymphonyEventKind::UserJoinedRoom { stream, user } => {
                g.on_joined(tx, stream, *user, name, bot)?
            }
            SymphonyEventKind::UserLeftRoom { stream, user } => {
                g.on_membership(tx, stream, *user, name, None, bot)?
            }
            SymphonyEventKind::MemberPromotedToOwner { stream, user } => {
                g.on_membership(tx, stream, *user, name, Some(true), bot)?
            }
            SymphonyEventKind::MemberDemotedFromOwner { stream, user } => {
                g.on_membership(tx, stream, *user, name, Some(false), bot)?
            }
            SymphonyEventKind::RoomDeactivated { stream } => g.on_room_deactivated(tx, stream)?,
            SymphonyEventKind::ElementsAction {
                stream,
                form_message_id,
                form_id,
                values,
                initiator_email,
            } => {
                if !commands::form::is_create_submission(form_id, values) {
                    return Ok(Vec::new()); // other forms are not the bot's
                }
                let user = event.initiator.ok_or_else(|| {
                    DecideError::Permanent("a form submission without its submitter".into())
                })?;
                tracing::info!(%user, form_id, "create form submitted");
                // One group per form, however often it is submitted.
                let origin =
                    Origin { key: format!("form:{form_message_id}"), event: event.id.clone() };
                let who =
                    Requester { user, email: initiator_email.clone(), stream: stream.clone() };
                match commands::form::parse_create_form(values) {
                    Ok(r) => {
                        let asked = NewGroup {
                            name: &r.name,
                            advisors: &r.advisors,
                            contacts: &r.contacts,
                            standard: r.standard,
                        };
                        g.create(tx, &who, asked, &origin)?
                    }
                    Err(invalid) => {
                        let form = &invalid.submitted;
                        let message_ml = commands::form::render_create_form(
                            &self.templates,
                            form,
                            &invalid.problems,
                        )?;
                        vec![Effect::PostMessage { stream: who.stream, message_ml }]
                    }
                }
            }
            _ => Vec::new(),
        })
    }

    fn on_outcome(
        &self,
        tx: &dyn GroupRepo,
        outcome: &Outcome,
    ) -> Result<Vec<Effect>, DecideError> {
        let g = &self.groups;
        Ok(match outcome {
            Outcome::RoomCreated { group, stream } => g.after_room_created(tx, *group, stream)?,
            Outcome::WaGroupRequested { group, request_id } => {
                g.on_wa_group_requested(tx, *group, request_id)?
            }
            Outcome::WaGroupFound { group, wa_group, invite_link } => {
                g.adopt_group(tx, *group, wa_group, invite_link.as_deref())?
            }
            Outcome::WaGroupMissing { group } => g.on_wa_group_missing(tx, *group)?,
            Outcome::InviteLinkReset { group, invite_link } => {
                g.on_invite_link_reset(tx, group, invite_link)?
            }
            Outcome::Failed { effect, reason } => g.on_effect_failed(tx, effect, reason)?,
            Outcome::FileNotSent { stream, name } => {
                let reason = format!(
                    "{name} was not sent: WhatsApp takes files only within 24 hours of a contact's last message, so a notice that you shared it was sent instead."
                );
                vec![crate::groups::service::post(
                    &self.templates,
                    stream,
                    "symphony/not_relayed",
                    &serde_json::json!({"reason": reason}),
                )?]
            }
            Outcome::DeliveryFailed { message_id, recipient, errors } => {
                self.relay.on_status(tx, message_id, "failed", recipient.as_ref(), errors, true)?
            }
        })
    }
}

/// The dispatch key of a stored group.
pub fn group_key(key: GroupKey) -> String {
    format!("group:{}", key.0)
}

enum FailedRoute {
    Group(GroupKey),
    Stream(StreamId),
    Wa(crate::domain::GroupId),
}

fn failed_effect_route(effect: &Effect) -> FailedRoute {
    match effect {
        Effect::PostMessage { stream, .. }
        | Effect::PostRelayed { stream, .. }
        | Effect::PostRelayedFile { stream, .. }
        | Effect::AddMember { stream, .. }
        | Effect::PromoteOwner { stream, .. }
        | Effect::RenameRoom { stream, .. }
        | Effect::RemoveMember { stream, .. }
        | Effect::DemoteOwner { stream, .. } => FailedRoute::Stream(stream.clone()),
        Effect::CreateRoom { group }
        | Effect::CreateWaGroup { group }
        | Effect::RefreshDescription { group }
        | Effect::RelayToWhatsApp { group, .. }
        | Effect::RelayFileToWhatsApp { group, .. } => FailedRoute::Group(*group),
        Effect::SendWaTemplate { group: Some(group), .. } => FailedRoute::Group(*group),
        Effect::SendWaTemplate { group: None, order, .. } => {
            FailedRoute::Wa(crate::domain::GroupId(order.clone()))
        }
        Effect::CheckStatus { message_id, .. } => {
            FailedRoute::Wa(crate::domain::GroupId(message_id.clone()))
        }
        Effect::ApproveJoin { group, .. }
        | Effect::RejectJoin { group, .. }
        | Effect::ResetInviteLink { group }
        | Effect::UpdateWaSubject { group, .. }
        | Effect::RemoveWaParticipants { group, .. }
        | Effect::DeleteWaGroup { group } => FailedRoute::Wa(group.clone()),
    }
}
