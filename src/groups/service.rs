//! The group lifecycle: decides, from commands, webhooks and the outcome of earlier effects,
//! what to record in the store and which effects to queue. It performs no network call itself:
//! effects are data that the executor performs (DESIGN.md §3).

use serde_json::json;

use crate::config::{EntitlementsConfig, FeaturesConfig, WaTemplatesConfig};
use crate::effects::Effect;
use crate::events::whatsapp::{WaError, WaUser};
use crate::groups::rules::{self, JoinDecision};
use crate::groups::{
    BusinessNumber, ContactRecord, ContactState, Created, E164, GroupId, GroupKey, GroupKind,
    GroupRecord, GroupState, Origin, Recipient, StreamId, TemplateParam, UserId,
};
use crate::store::{GroupRepo, StoreError};
use crate::templates::{TemplateError, Templates};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The event came before what it refers to was recorded (a webhook faster than the
    /// response of the call that caused it): try again shortly.
    #[error("not yet: {0}")]
    NotYet(String),
}

/// Graph's "participant not in group" (131212).
const NOT_A_PARTICIPANT: i64 = 131_212;

/// What the lifecycle needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub features: FeaturesConfig,
    pub entitlements: EntitlementsConfig,
    pub wa_templates: WaTemplatesConfig,
    /// The bot's own WhatsApp business number, when known: never a contact.
    pub business: BusinessNumber,
}

pub struct GroupService {
    pub templates: std::sync::Arc<Templates>,
    pub settings: GroupSettings,
}

/// The bot posts `template` (a `symphony/…` MessageML template) rendered with `data`.
pub fn post(
    templates: &Templates,
    stream: &StreamId,
    template: &str,
    data: &serde_json::Value,
) -> Result<Effect, ServiceError> {
    Ok(Effect::PostMessage {
        stream: stream.clone(),
        message_ml: templates.render(template, data)?,
    })
}

/// What a create asks for (the command's or the form's).
#[derive(Debug, Clone, Copy)]
pub struct NewGroup<'a> {
    pub name: &'a str,
    pub advisors: &'a [UserId],
    pub contacts: &'a [E164],
    /// `--standard` (or the form's box unticked).
    pub standard: bool,
}

/// The person who typed a command.
#[derive(Debug, Clone)]
pub struct Requester {
    pub user: UserId,
    pub email: Option<String>,
    /// Where the command was typed (replies go there).
    pub stream: StreamId,
}

impl GroupService {
    fn post(
        &self,
        stream: &StreamId,
        template: &str,
        data: serde_json::Value,
    ) -> Result<Effect, ServiceError> {
        post(&self.templates, stream, template, &data)
    }

    /// `/wa create`: checks the entitlement, records the group, and starts with the room.
    pub fn create(
        &self,
        tx: &dyn GroupRepo,
        who: &Requester,
        asked: NewGroup<'_>,
        origin: &Origin,
    ) -> Result<Vec<Effect>, ServiceError> {
        let NewGroup { name, advisors, contacts, standard } = asked;
        if !rules::entitled(&self.settings.entitlements.advisors, who.user, who.email.as_deref()) {
            let reply = self.templates.usage(
                "You are not entitled to create WhatsApp groups; ask your administrator to add you.",
                "/wa help",
            )?;
            return Ok(vec![Effect::PostMessage { stream: who.stream.clone(), message_ml: reply }]);
        }
        if let Err(refusals) = rules::check_add_contacts(
            GroupKind::Standard,
            &[],
            contacts,
            self.settings.business.get(),
            false,
        ) {
            let reason = refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            return self.refuse(&who.stream, &format!("Nothing was created: {reason}."));
        }
        let (kind, reason) =
            rules::group_kind(contacts.len(), standard, self.settings.features.native_groups);
        let reference = new_reference();
        let key = match tx
            .create_group(name, kind, who.user, advisors, contacts, origin, &reference)?
        {
            Created::New(key) => key,
            // The same event decided again (a decision and its effects commit together, so
            // this only follows a lost processed mark): the room is asked for again, which
            // recognises a room already made.
            Created::Replay(key) => return Ok(vec![Effect::CreateRoom { group: key }]),
            Created::Again(key) => {
                let made = tx.group(key)?.map(|g| g.name).unwrap_or_default();
                return self.refuse(
                    &who.stream,
                    &format!("This form already created {made}; type /wa create for a new form."),
                );
            }
        };
        let started = self.post(
            &who.stream,
            "symphony/create_started",
            json!({"name": name, "native": kind == GroupKind::Native, "reason": reason.map(|r| r.to_string()).unwrap_or_default()}),
        )?;
        Ok(vec![started, Effect::CreateRoom { group: key }])
    }

    /// The room of a new group exists: members, owners, then the WhatsApp group (native) or
    /// the summary (standard).
    pub fn after_room_created(
        &self,
        tx: &dyn GroupRepo,
        key: GroupKey,
        stream: &StreamId,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = tx.group(key)? else { return Ok(Vec::new()) };
        if !tx.set_group_stream(key, stream)? {
            return Ok(Vec::new()); // known already: this outcome was decided before
        }
        let mut effects = Vec::new();
        for (user, owner) in tx.advisors(key)? {
            effects.push(Effect::AddMember { stream: stream.clone(), user });
            if owner {
                effects.push(Effect::PromoteOwner { stream: stream.clone(), user });
            }
        }
        let contacts: Vec<String> =
            tx.contacts(key)?.into_iter().map(|c| c.phone.as_str().to_owned()).collect();
        match group.kind {
            GroupKind::Native => effects.push(Effect::CreateWaGroup { group: key }),
            GroupKind::Standard => {
                let (_, reason) =
                    rules::group_kind(contacts.len(), false, self.settings.features.native_groups);
                let reason =
                    reason.map(|r| r.to_string()).unwrap_or_else(|| "not native, as asked".into());
                tx.set_group_state(key, GroupState::Active)?;
                effects.push(self.post(
                    stream,
                    "symphony/standard_ready",
                    json!({"name": group.name, "reason": reason, "contacts": contacts}),
                )?);
            }
        }
        Ok(effects)
    }

    /// WhatsApp took the create call: its `group_create` webhook will carry `request_id`.
    pub fn on_wa_group_requested(
        &self,
        tx: &dyn GroupRepo,
        key: GroupKey,
        request_id: &str,
    ) -> Result<Vec<Effect>, ServiceError> {
        if !tx.set_group_request(key, request_id)? {
            tracing::info!(group = key.0, "a create answer for a group not creating any more");
        }
        Ok(Vec::new())
    }

    /// `group_create` webhook: invitations to every contact, the summary in the room.
    pub fn on_group_created(
        &self,
        tx: &dyn GroupRepo,
        request_id: &str,
        wa: &GroupId,
        link: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = tx.group_by_request(request_id)? else {
            if tx.groups_awaiting_request()? > 0 {
                return Err(ServiceError::NotYet(format!(
                    "group_create {request_id} before its request id was recorded"
                )));
            }
            tracing::info!(request_id, "group_create for a request this bot did not make; ignored");
            return Ok(Vec::new());
        };
        self.group_created(tx, group, wa, link, subject)
    }

    /// A WhatsApp group found by listing (its create answer was lost): set up as if its
    /// `group_create` webhook had come.
    pub fn adopt_group(
        &self,
        tx: &dyn GroupRepo,
        key: GroupKey,
        wa: &GroupId,
        link: Option<&str>,
    ) -> Result<Vec<Effect>, ServiceError> {
        match tx.group(key)? {
            Some(group) => self.group_created(tx, group, wa, link, None),
            None => Ok(Vec::new()),
        }
    }

    /// Records the group's WhatsApp id and link; invitations to every contact, the summary.
    /// `subject` is the WhatsApp group's, when the webhook says it: a room renamed while the
    /// group was being made has its new name sent (no notice: nobody is in the group yet).
    fn group_created(
        &self,
        tx: &dyn GroupRepo,
        group: GroupRecord,
        wa: &GroupId,
        link: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Vec<Effect>, ServiceError> {
        // Only a group still waiting takes a WhatsApp group: a second answer, or one for a
        // group failed or closed meanwhile, changes nothing.
        if !tx.set_group_created(group.key, wa, link)? {
            tracing::info!(group = group.key.0, wa = %wa, "group_create for a group not waiting for one; ignored");
            return Ok(Vec::new());
        }
        let mut effects = Vec::new();
        let name: String = group.name.chars().take(crate::domain::MAX_NAME_CHARS).collect();
        if subject.is_some_and(|s| s != name) {
            effects.push(Effect::UpdateWaSubject { group: wa.clone(), subject: name });
        }
        let mut invited = Vec::new();
        for contact in tx.contacts(group.key)? {
            if contact.barred || contact.state != ContactState::Invited {
                continue;
            }
            invited.push(contact.phone.as_str().to_owned());
            let order = contact.phone.as_str().to_owned();
            effects.push(self.invitation(&group, wa, contact.phone, &order));
        }
        if let Some(stream) = &group.stream {
            effects.push(self.post(
                stream,
                "symphony/group_ready",
                json!({"name": group.name, "invited": invited}),
            )?);
        }
        Ok(effects)
    }

    /// `group_create` failed: the room is told.
    pub fn on_group_create_failed(
        &self,
        tx: &dyn GroupRepo,
        request_id: &str,
        errors: &[WaError],
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = tx.group_by_request(request_id)? else { return Ok(Vec::new()) };
        self.group_failed(tx, group, errors)
    }

    /// The WhatsApp group never came (the reconciler listed the number's groups and none
    /// carries this group's marker): failed, unless it came meanwhile.
    pub fn on_wa_group_missing(
        &self,
        tx: &dyn GroupRepo,
        key: GroupKey,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = tx.group(key)? else { return Ok(Vec::new()) };
        let error = WaError {
            code: 0,
            title: None,
            message: Some("WhatsApp never confirmed the group, and it does not exist".into()),
            details: None,
        };
        self.group_failed(tx, group, &[error])
    }

    fn group_failed(
        &self,
        tx: &dyn GroupRepo,
        group: GroupRecord,
        errors: &[WaError],
    ) -> Result<Vec<Effect>, ServiceError> {
        if !matches!(group.state, GroupState::Creating | GroupState::AwaitingGroup) {
            return Ok(Vec::new()); // it came after all, or was closed: nothing fails
        }
        tx.set_group_state(group.key, GroupState::Failed)?;
        let reason = WaError::describe(errors);
        match &group.stream {
            Some(stream) => Ok(vec![self.post(
                stream,
                "symphony/group_failed",
                json!({"name": group.name, "reason": reason}),
            )?]),
            None => Ok(Vec::new()),
        }
    }

    /// A join request: only the intended, not-barred contact gets in; the room hears of others.
    /// The approval is guarded again when it runs (see [`Effect::ApproveJoin`]).
    pub fn on_join_request(
        &self,
        tx: &dyn GroupRepo,
        wa: &GroupId,
        request_id: &str,
        user: &WaUser,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = self.group_of_wa(tx, wa)? else { return Ok(Vec::new()) };
        let contacts = tx.contacts(group.key)?;
        let phone = identify(&contacts, user);
        let reject = |reason: String| -> Result<Vec<Effect>, ServiceError> {
            let shown = phone.as_ref().map_or_else(|| shown_user(user), |p| p.as_str().to_owned());
            let mut effects =
                vec![Effect::RejectJoin { group: wa.clone(), request_id: request_id.to_owned() }];
            if let Some(stream) = &group.stream {
                effects.push(self.post(
                    stream,
                    "symphony/join_rejected",
                    json!({"phone": shown, "reason": reason}),
                )?);
            }
            Ok(effects)
        };
        if group.state != GroupState::Active {
            return reject("this group is not open to new participants.".to_owned());
        }
        match rules::join_decision(phone.as_ref(), &contacts) {
            JoinDecision::Approve => {
                let Some(p) = &phone else { return reject("no phone number to check".into()) };
                if contacts.iter().any(|c| &c.phone == p && c.state != ContactState::Joined) {
                    tx.set_contact_state(group.key, p, ContactState::Requested)?;
                }
                tx.set_join_request(group.key, p, Some(request_id))?;
                if let Some(bsuid) = &user.user_id {
                    tx.set_contact_bsuid(group.key, p, bsuid)?;
                }
                Ok(vec![Effect::ApproveJoin {
                    group: wa.clone(),
                    request_id: request_id.to_owned(),
                    key: Some(group.key),
                    phone: Some(p.clone()),
                }])
            }
            JoinDecision::Reject(reason) => reject(reason.to_string()),
        }
    }

    /// `group_join_request_revoked`: the contact withdrew; nothing is pending any more.
    pub fn on_join_request_revoked(
        &self,
        tx: &dyn GroupRepo,
        wa: &GroupId,
        user: &WaUser,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = tx.group_by_wa(wa)? else { return Ok(Vec::new()) };
        let contacts = tx.contacts(group.key)?;
        if let Some(p) = identify(&contacts, user) {
            tx.set_join_request(group.key, &p, None)?;
            if contacts.iter().any(|c| c.phone == p && c.state == ContactState::Requested) {
                tx.set_contact_state(group.key, &p, ContactState::Invited)?;
            }
        }
        Ok(Vec::new())
    }

    /// `group_participants_add`: an entitled contact (invited, not barred) is confirmed on
    /// both sides, and once every invitee is in the link is reset so a leaked copy is dead.
    /// Anyone else in the group (barred, never invited, left without a new invitation) is
    /// removed at once and the room is told.
    pub fn on_participants_added(
        &self,
        tx: &dyn GroupRepo,
        wa: &GroupId,
        users: &[WaUser],
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = self.group_of_wa(tx, wa)? else { return Ok(Vec::new()) };
        let mut effects = Vec::new();
        let mut confirmed = false;
        let mut intruders = Vec::new();
        for user in users {
            let contacts = tx.contacts(group.key)?;
            let phone = identify(&contacts, user);
            let known = phone.as_ref().and_then(|p| contacts.iter().find(|c| &c.phone == p));
            let entitled = group.state == GroupState::Active
                && known.is_some_and(|c| {
                    !c.barred
                        && matches!(
                            c.state,
                            ContactState::Invited | ContactState::Requested | ContactState::Joined
                        )
                });
            let (Some(phone), true) = (phone, entitled) else {
                let why = match known {
                    Some(c) if c.barred => "was removed from this group",
                    Some(c) if c.state == ContactState::Left => "left and was not invited again",
                    Some(_) => "is not entitled to be in it",
                    None => "was never invited",
                };
                let shown = known.map_or_else(|| shown_user(user), ContactRecord::shown);
                tracing::warn!(
                    group = group.key.0,
                    "a participant not entitled to the group is removed"
                );
                intruders.push(participant_id(user, known.map(|c| &c.phone)));
                if let Some(stream) = &group.stream {
                    effects.push(self.post(
                        stream,
                        "symphony/intruder_removed",
                        json!({"phone": shown, "reason": why}),
                    )?);
                }
                continue;
            };
            tx.set_join_request(group.key, &phone, None)?;
            if let Some(bsuid) = &user.user_id {
                tx.set_contact_bsuid(group.key, &phone, bsuid)?;
            }
            if known.is_some_and(|c| c.state == ContactState::Joined) {
                continue; // already confirmed
            }
            tx.set_contact_state(group.key, &phone, ContactState::Joined)?;
            confirmed = true;
            let who = known.map_or_else(|| phone.as_str().to_owned(), ContactRecord::shown);
            if let Some(stream) = &group.stream {
                effects.push(self.post(
                    stream,
                    "symphony/contact_joined",
                    json!({"phone": phone.as_str(), "who": who}),
                )?);
            }
            let text = self.templates.render("whatsapp/joined", &json!({"name": group.name}))?;
            effects.push(self.notice_to(&group, wa.as_str(), Recipient::Phone(phone), text));
        }
        let intruders: Vec<String> = intruders.into_iter().flatten().collect();
        for chunk in intruders.chunks(rules::MAX_NATIVE_CONTACTS) {
            effects.push(Effect::RemoveWaParticipants { group: wa.clone(), users: chunk.to_vec() });
        }
        if confirmed && rules::all_invitees_joined(&tx.contacts(group.key)?) {
            effects.push(Effect::ResetInviteLink { group: wa.clone() });
        }
        Ok(effects)
    }

    /// The group of a WhatsApp group id. While one of ours still waits for its `group_create`,
    /// an event about an unknown group may be about it (webhooks are not ordered): "not yet",
    /// tried again shortly, rather than dropped.
    fn group_of_wa(
        &self,
        tx: &dyn GroupRepo,
        wa: &GroupId,
    ) -> Result<Option<GroupRecord>, ServiceError> {
        if let Some(group) = tx.group_by_wa(wa)? {
            return Ok(Some(group));
        }
        if tx.groups_awaiting_request()? > 0 || !tx.groups_awaiting_webhook(i64::MAX)?.is_empty() {
            return Err(ServiceError::NotYet(format!("an event of {wa} before its group_create")));
        }
        Ok(None)
    }

    /// WhatsApp suspended the group (or lifted the suspension): the room is told, once per
    /// webhook (a redelivery is the same event).
    pub fn on_suspension(
        &self,
        tx: &dyn GroupRepo,
        wa: &GroupId,
        suspended: bool,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = tx.group_by_wa(wa)? else { return Ok(Vec::new()) };
        let Some(stream) = &group.stream else { return Ok(Vec::new()) };
        Ok(vec![self.post(
            stream,
            "symphony/group_suspended",
            json!({"name": group.name, "suspended": suspended}),
        )?])
    }

    /// What a webhook showed of a contact (a delivered or read 1:1 message's `contacts`): their
    /// user id and profile name are kept, so that later events without their number find them
    /// and confirmations name them.
    pub fn on_profile(
        &self,
        tx: &dyn GroupRepo,
        contact: &crate::events::whatsapp::WaContact,
    ) -> Result<Vec<Effect>, ServiceError> {
        if let Some(phone) = phone_of(tx, &contact.user)? {
            tx.set_contact_profile(
                &phone,
                contact.user.user_id.as_deref(),
                contact.name.as_deref(),
            )?;
        }
        Ok(Vec::new())
    }

    /// The invite link was reset: the new one is kept (the group's state is left alone).
    pub fn on_invite_link_reset(
        &self,
        tx: &dyn GroupRepo,
        wa: &GroupId,
        link: &str,
    ) -> Result<Vec<Effect>, ServiceError> {
        if let Some(group) = tx.group_by_wa(wa)? {
            tx.set_invite_link(group.key, link)?;
        }
        Ok(Vec::new())
    }
}

impl GroupService {
    /// An effect was given up: its room is told what could not be done, and why. A group whose
    /// room or WhatsApp group could not be made is failed.
    pub fn on_effect_failed(
        &self,
        tx: &dyn GroupRepo,
        effect: &Effect,
        reason: &str,
    ) -> Result<Vec<Effect>, ServiceError> {
        let group_stream = |key: GroupKey| -> Result<Option<StreamId>, ServiceError> {
            Ok(tx.group(key)?.and_then(|g| g.stream))
        };
        let wa_stream = |wa: &GroupId| -> Result<Option<StreamId>, ServiceError> {
            Ok(tx.group_by_wa(wa)?.and_then(|g| g.stream))
        };
        let (what, stream) = match effect {
            // A post that failed is not reported in the room it could not reach (the log has it).
            Effect::PostMessage { .. }
            | Effect::PostRelayed { .. }
            | Effect::CheckStatus { .. } => {
                return Ok(Vec::new());
            }
            Effect::PostRelayedFile { .. } => return Ok(Vec::new()), // posted without the file
            Effect::RelayFileToWhatsApp { to, stream, name, author, .. } => {
                (format!("send {author}'s file \"{name}\" to {}", to.shown()), Some(stream.clone()))
            }
            Effect::RelayToWhatsApp { group, to, author, excerpt, .. } => (
                format!("relay {author}'s message \"{excerpt}\" to {}", to.shown()),
                group_stream(*group)?,
            ),
            Effect::CreateRoom { group } | Effect::CreateWaGroup { group } => {
                if let Some(g) = tx.group(*group)?
                    && matches!(g.state, GroupState::Creating | GroupState::AwaitingGroup)
                {
                    tx.set_group_state(g.key, GroupState::Failed)?;
                }
                let what = if matches!(effect, Effect::CreateRoom { .. }) {
                    "create the room"
                } else {
                    "create the WhatsApp group"
                };
                (what.to_owned(), group_stream(*group)?)
            }
            Effect::RefreshDescription { group } => {
                ("update the WhatsApp group description".to_owned(), group_stream(*group)?)
            }
            Effect::AddMember { stream, user } => {
                (format!("add user {user} to the room"), Some(stream.clone()))
            }
            Effect::PromoteOwner { stream, user } => {
                (format!("make user {user} an owner"), Some(stream.clone()))
            }
            Effect::RenameRoom { stream, .. } => {
                ("rename the room".to_owned(), Some(stream.clone()))
            }
            Effect::RemoveMember { stream, user } => {
                (format!("remove user {user} from the room"), Some(stream.clone()))
            }
            Effect::DemoteOwner { stream, user } => {
                (format!("demote user {user}"), Some(stream.clone()))
            }
            // The group it is about is named in the effect (a standard group's notice is in
            // the order of a phone, not of a WhatsApp group).
            Effect::SendWaTemplate { group, to, order, .. } => {
                let stream = match group {
                    Some(key) => group_stream(*key)?,
                    None => wa_stream(&GroupId(order.clone()))?,
                };
                (format!("send a WhatsApp message to {}", to.shown()), stream)
            }
            Effect::ApproveJoin { group, .. }
            | Effect::RejectJoin { group, .. }
            | Effect::ResetInviteLink { group }
            | Effect::UpdateWaSubject { group, .. }
            | Effect::RemoveWaParticipants { group, .. }
            | Effect::DeleteWaGroup { group } => {
                let what = match effect {
                    Effect::ApproveJoin { .. } => "approve a join request",
                    Effect::RejectJoin { .. } => "reject a join request",
                    Effect::ResetInviteLink { .. } => "reset the invite link",
                    Effect::UpdateWaSubject { .. } => "rename the WhatsApp group",
                    Effect::RemoveWaParticipants { .. } => {
                        "remove participants from the WhatsApp group"
                    }
                    _ => "delete the WhatsApp group",
                };
                (what.to_owned(), wa_stream(group)?)
            }
        };
        let Some(stream) = stream else { return Ok(Vec::new()) };
        Ok(vec![self.post(
            &stream,
            "symphony/effect_failed",
            json!({"what": what, "reason": reason}),
        )?])
    }
}

/// The contact a WhatsApp user is: by phone (`wa_id`), else by the business-scoped user id
/// seen before (username users come without a phone).
fn identify(contacts: &[ContactRecord], user: &WaUser) -> Option<E164> {
    if let Some(phone) =
        user.wa_id.as_deref().or(user.input.as_deref()).and_then(|p| E164::parse(p).ok())
    {
        return Some(phone);
    }
    let bsuid = user.user_id.as_deref()?;
    contacts.iter().find(|c| c.bsuid.as_deref() == Some(bsuid)).map(|c| c.phone.clone())
}

/// The number of a WhatsApp user: theirs when shown, else the contact's known by their user id
/// (username users come without their number).
pub fn phone_of(tx: &dyn GroupRepo, user: &WaUser) -> Result<Option<E164>, StoreError> {
    match user.wa_id.as_deref().and_then(|p| E164::parse(p).ok()) {
        Some(phone) => Ok(Some(phone)),
        None => match user.user_id.as_deref() {
            Some(bsuid) => tx.phone_of_bsuid(bsuid),
            None => Ok(None),
        },
    }
}

/// How a WhatsApp user without a known phone is shown.
fn shown_user(user: &WaUser) -> String {
    user.username
        .as_deref()
        .map(|u| format!("@{u}"))
        .or_else(|| user.wa_id.as_ref().map(|w| format!("+{w}")))
        .unwrap_or_else(|| "an unknown WhatsApp user".to_owned())
}

/// The id to name a participant by in a removal: the phone, else the business-scoped id.
fn participant_id(user: &WaUser, phone: Option<&E164>) -> Option<String> {
    phone
        .map(|p| p.wa_id().to_owned())
        .or_else(|| user.wa_id.clone())
        .or_else(|| user.user_id.clone())
        .or_else(|| user.input.clone())
}

/// A fresh marker for what the bot creates for a new group.
fn new_reference() -> String {
    use rand::Rng as _;
    let n: u64 = rand::thread_rng().r#gen();
    format!("wagb-{n:016x}")
}

impl GroupService {
    /// A contact's personal invitation: the invitation template, whose `group_id` parameter
    /// WhatsApp turns into the group's link. `order`: the contact's phone for a new group's
    /// invitations (sent side by side: nothing was queued for the group before them), the
    /// group's id for later ones (after a link reset queued before them).
    fn invitation(&self, group: &GroupRecord, wa: &GroupId, phone: E164, order: &str) -> Effect {
        let t = &self.settings.wa_templates.invitation;
        Effect::SendWaTemplate {
            order: order.to_owned(),
            to: Recipient::Phone(phone),
            name: t.name.clone(),
            language: t.language.clone(),
            params: vec![TemplateParam::GroupId(wa.clone())],
            group: Some(group.key),
            about: Some(format!("invitation to {}", group.name)),
        }
    }

    /// A notice (the `notice` template carrying `text`) to a group or a contact, in the order of
    /// `order` (a WhatsApp group id or a phone).
    fn notice_to(&self, group: &GroupRecord, order: &str, to: Recipient, text: String) -> Effect {
        let t = &self.settings.wa_templates.notice;
        Effect::SendWaTemplate {
            order: order.to_owned(),
            to,
            name: t.name.clone(),
            language: t.language.clone(),
            about: Some(text.clone()),
            params: vec![TemplateParam::Text(text)],
            group: Some(group.key),
        }
    }
}

/// What `/wa info` shows that only the pod knows, read live by the caller.
#[derive(Debug, Clone, Default)]
pub struct InfoExtras {
    /// Display names of the advisors and of the attachments' senders.
    pub names: std::collections::HashMap<UserId, String>,
    /// The room's attachments (`GET /pod/v1/streams/{sid}/attachments`).
    pub attachments: Vec<crate::events::symphony::AttachmentInfo>,
}

/// An in-room management command, as the router hands it over.
#[derive(Debug, Clone)]
pub enum Manage {
    Info(InfoExtras),
    Rename(String),
    Add { advisors: Vec<UserId>, contacts: Vec<E164> },
    Remove { advisors: Vec<UserId>, contacts: Vec<E164> },
    Promote(UserId),
    Demote(UserId),
    Invite(Vec<E164>),
}

impl GroupService {
    fn refuse(&self, stream: &StreamId, reason: &str) -> Result<Vec<Effect>, ServiceError> {
        Ok(vec![self.post(stream, "symphony/refused", json!({"reason": reason}))?])
    }

    /// A notice rendered from `whatsapp/<template>`: to the WhatsApp group of a native group, or
    /// 1:1 to each current contact of a standard group (prefixed with the group's name).
    fn announce(
        &self,
        tx: &dyn GroupRepo,
        group: &GroupRecord,
        template: &str,
        data: serde_json::Value,
    ) -> Result<Vec<Effect>, ServiceError> {
        let text = self.templates.render(template, &data)?;
        match (group.kind, &group.wa_group) {
            (_, Some(wa)) => {
                Ok(vec![self.notice_to(group, wa.as_str(), Recipient::Group(wa.clone()), text)])
            }
            (GroupKind::Standard, None) => {
                let text = format!("[{}] {text}", group.name);
                Ok(tx
                    .contacts(group.key)?
                    .into_iter()
                    .filter(|c| {
                        !c.barred && !matches!(c.state, ContactState::Left | ContactState::Removed)
                    })
                    .map(|c| {
                        let order = c.phone.as_str().to_owned();
                        self.notice_to(group, &order, Recipient::Phone(c.phone), text.clone())
                    })
                    .collect())
            }
            (GroupKind::Native, None) => Ok(Vec::new()), // no WhatsApp group yet
        }
    }

    /// A management command typed in a group's room. `owners` is the room's live owner list
    /// (read from the pod just before; `None` for commands anyone may use).
    pub fn manage(
        &self,
        tx: &dyn GroupRepo,
        who: &Requester,
        command: Manage,
        owners: Option<&[UserId]>,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = tx.group_by_stream(&who.stream)? else {
            return self.refuse(
                &who.stream,
                "This command works in the room of a WhatsApp group; use /wa create first.",
            );
        };
        if !matches!(command, Manage::Info(_))
            && !owners.is_some_and(|o| rules::may_manage(who.user, o))
        {
            return self.refuse(
                &who.stream,
                "Only the owners of this room may manage its WhatsApp group.",
            );
        }
        let stream = &who.stream;
        let contacts = tx.contacts(group.key)?;
        match command {
            Manage::Info(extras) => {
                let name_of = |u: &UserId| {
                    extras.names.get(u).cloned().unwrap_or_else(|| format!("user {u}"))
                };
                let advisors = tx.advisors(group.key)?;
                let owners: Vec<String> =
                    advisors.iter().filter(|(_, o)| *o).map(|(u, _)| name_of(u)).collect();
                let all: Vec<String> = advisors.iter().map(|(u, _)| name_of(u)).collect();
                let contacts: Vec<_> = contacts
                    .iter()
                    .map(|c| json!({"phone": c.phone.as_str(), "name": c.display_name().unwrap_or_default(), "state": if c.barred { "removed" } else { c.state.as_str() }}))
                    .collect();
                let attachments: Vec<_> = extras
                    .attachments
                    .iter()
                    .map(|a| {
                        json!({
                            "name": a.name,
                            "size": a.size.map(file_size).unwrap_or_default(),
                            "sender": a.user_id.as_ref().map(name_of).unwrap_or_default(),
                            "date": a.ingestion_date.map(utc_minute).unwrap_or_default(),
                        })
                    })
                    .collect();
                let created = chrono_free_date(group.created_at);
                let kind = match group.kind {
                    GroupKind::Native => "native",
                    GroupKind::Standard => "standard",
                };
                Ok(vec![self.post(stream, "symphony/info", json!({"name": group.name, "kind": kind, "created": created,
                    "owners": owners, "advisors": all, "contacts": contacts, "attachments": attachments,
                    "link": group.invite_link.clone().unwrap_or_default()}))?])
            }
            Manage::Rename(name) => Ok(vec![Effect::RenameRoom { stream: stream.clone(), name }]),
            Manage::Promote(user) => {
                Ok(vec![Effect::PromoteOwner { stream: stream.clone(), user }])
            }
            Manage::Demote(user) => Ok(vec![Effect::DemoteOwner { stream: stream.clone(), user }]),
            Manage::Add { advisors, contacts: adding } => {
                if let Err(refusals) = rules::check_add_contacts(
                    group.kind,
                    &contacts,
                    &adding,
                    self.settings.business.get(),
                    false,
                ) {
                    let reason =
                        refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                    return self.refuse(stream, &format!("Nothing was added: {reason}."));
                }
                let mut effects: Vec<Effect> = advisors
                    .into_iter()
                    .map(|user| Effect::AddMember { stream: stream.clone(), user })
                    .collect();
                effects.extend(self.invite(tx, &group, &adding, true)?);
                Ok(effects)
            }
            Manage::Invite(phones) => {
                if let Err(refusals) = rules::check_add_contacts(
                    group.kind,
                    &contacts,
                    &phones,
                    self.settings.business.get(),
                    true,
                ) {
                    let reason =
                        refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                    return self.refuse(stream, &format!("No invitation was sent: {reason}."));
                }
                self.invite(tx, &group, &phones, false)
            }
            Manage::Remove { advisors, contacts: removing } => {
                let mut effects: Vec<Effect> = advisors
                    .into_iter()
                    .map(|user| Effect::RemoveMember { stream: stream.clone(), user })
                    .collect();
                let mut users = Vec::new();
                for phone in &removing {
                    let Some(c) = contacts.iter().find(|c| &c.phone == phone) else {
                        effects.push(self.post(
                            stream,
                            "symphony/refused",
                            json!({"reason": format!("{phone} is not a contact of this group.")}),
                        )?);
                        continue;
                    };
                    if c.barred {
                        effects.push(self.post(
                            stream,
                            "symphony/refused",
                            json!({"reason": format!("{phone} was already removed from this group (and cannot join it again).")}),
                        )?);
                        continue;
                    }
                    // A pending request is rejected; an approval already queued is re-checked
                    // when it runs, and anyone who gets in anyway is removed on arrival.
                    if let (Some(wa), Some(request)) =
                        (&group.wa_group, tx.join_request(group.key, phone)?)
                    {
                        effects.push(Effect::RejectJoin { group: wa.clone(), request_id: request });
                        tx.set_join_request(group.key, phone, None)?;
                    }
                    let was_in = c.state == ContactState::Joined;
                    tx.set_contact_state(group.key, phone, ContactState::Removed)?;
                    effects.push(self.post(
                        stream,
                        "symphony/contact_removed",
                        json!({"phone": phone.as_str(), "who": c.shown()}),
                    )?);
                    effects.extend(self.announce(
                        tx,
                        &group,
                        "whatsapp/contact_removed",
                        json!({"phone": phone.as_str()}),
                    )?);
                    if was_in && group.wa_group.is_some() {
                        users.push(phone.wa_id().to_owned());
                    }
                }
                if let (Some(wa), false) = (&group.wa_group, users.is_empty()) {
                    for chunk in users.chunks(rules::MAX_NATIVE_CONTACTS) {
                        effects.push(Effect::RemoveWaParticipants {
                            group: wa.clone(),
                            users: chunk.to_vec(),
                        });
                    }
                }
                Ok(effects)
            }
        }
    }

    /// Invitations (new contacts when `adding`, resends otherwise), the notice, the room reply.
    fn invite(
        &self,
        tx: &dyn GroupRepo,
        group: &GroupRecord,
        phones: &[E164],
        adding: bool,
    ) -> Result<Vec<Effect>, ServiceError> {
        if phones.is_empty() {
            return Ok(Vec::new());
        }
        let mut effects = Vec::new();
        for phone in phones {
            tx.set_contact_state(group.key, phone, ContactState::Invited)?;
            if let Some(wa) = &group.wa_group {
                effects.push(self.invitation(group, wa, phone.clone(), wa.as_str()));
            }
            if adding {
                effects.extend(self.announce(
                    tx,
                    group,
                    "whatsapp/contact_added",
                    json!({"phone": phone.as_str()}),
                )?);
            }
        }
        if let Some(stream) = &group.stream {
            let shown: Vec<&str> = phones.iter().map(E164::as_str).collect();
            effects.push(self.post(
                stream,
                "symphony/contacts_invited",
                json!({"phones": shown}),
            )?);
        }
        Ok(effects)
    }

    /// The room was renamed (by command or natively): one notice, the WhatsApp subject follows.
    pub fn on_room_renamed(
        &self,
        tx: &dyn GroupRepo,
        stream: &StreamId,
        name: &str,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = tx.group_by_stream(stream)? else { return Ok(Vec::new()) };
        if group.name == name {
            return Ok(Vec::new()); // no change: nothing to announce
        }
        tx.rename_group(group.key, name)?;
        let mut effects = Vec::new();
        if let Some(wa) = &group.wa_group {
            let subject: String = name.chars().take(crate::domain::MAX_NAME_CHARS).collect();
            effects.push(Effect::UpdateWaSubject { group: wa.clone(), subject });
        }
        let renamed = GroupRecord { name: name.to_owned(), ..group };
        effects.extend(self.announce(tx, &renamed, "whatsapp/renamed", json!({"name": name}))?);
        Ok(effects)
    }

    /// A user joined the room. Joining says nothing of ownership: an advisor the store knows
    /// (the creator, added as an owner) keeps their flag.
    pub fn on_joined(
        &self,
        tx: &dyn GroupRepo,
        stream: &StreamId,
        user: UserId,
        name: Option<&str>,
        bot: UserId,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = tx.group_by_stream(stream)? else { return Ok(Vec::new()) };
        let owner = tx.advisors(group.key)?.into_iter().find(|(u, _)| *u == user).map(|(_, o)| o);
        self.on_membership(tx, stream, user, name, Some(owner.unwrap_or(false)), bot)
    }

    /// Room membership changed: `member` is `Some(owner)` when the user is (still) in the room.
    pub fn on_membership(
        &self,
        tx: &dyn GroupRepo,
        stream: &StreamId,
        user: UserId,
        name: Option<&str>,
        member: Option<bool>,
        bot: UserId,
    ) -> Result<Vec<Effect>, ServiceError> {
        if user == bot {
            return Ok(Vec::new());
        }
        let Some(group) = tx.group_by_stream(stream)? else { return Ok(Vec::new()) };
        let before = tx.advisors(group.key)?.into_iter().find(|(u, _)| *u == user).map(|(_, o)| o);
        if before == member {
            return Ok(Vec::new()); // the store already knows: nothing to announce
        }
        tx.set_advisor(group.key, user, member)?;
        let advisor = name.map_or_else(|| user.to_string(), str::to_owned);
        let template = match (before, member) {
            (None, Some(_)) => "whatsapp/advisor_added",
            (Some(_), None) => "whatsapp/advisor_removed",
            (Some(false), Some(true)) => "whatsapp/owner_promoted",
            (Some(true), Some(false)) => "whatsapp/owner_demoted",
            _ => return Ok(Vec::new()),
        };
        let mut effects = self.announce(tx, &group, template, json!({"advisor": advisor}))?;
        if group.wa_group.is_some()
            && matches!(template, "whatsapp/advisor_added" | "whatsapp/advisor_removed")
        {
            effects.push(Effect::RefreshDescription { group: group.key });
        }
        Ok(effects)
    }

    /// The room was deactivated: a last notice, then the WhatsApp group is deleted.
    pub fn on_room_deactivated(
        &self,
        tx: &dyn GroupRepo,
        stream: &StreamId,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = tx.group_by_stream(stream)? else { return Ok(Vec::new()) };
        if group.state == GroupState::Closed {
            return Ok(Vec::new());
        }
        tx.set_group_state(group.key, GroupState::Closed)?;
        let mut effects =
            self.announce(tx, &group, "whatsapp/closed", json!({"name": group.name}))?;
        if let Some(wa) = &group.wa_group {
            effects.push(Effect::DeleteWaGroup { group: wa.clone() });
        }
        Ok(effects)
    }

    /// Contacts left (or were removed) on WhatsApp.
    pub fn on_participants_removed(
        &self,
        tx: &dyn GroupRepo,
        wa: &GroupId,
        initiated_by: Option<&str>,
        users: &[WaUser],
        failed: &[crate::events::whatsapp::FailedParticipant],
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = tx.group_by_wa(wa)? else { return Ok(Vec::new()) };
        let mut effects = Vec::new();
        if initiated_by == Some("business") {
            // Our own removal, already recorded and announced; a part that failed is said.
            // "Not in the group" is what the removal wanted (they left, or a stale "added").
            let failed: Vec<_> = failed
                .iter()
                .filter(|f| !f.errors.iter().all(|e| e.code == NOT_A_PARTICIPANT))
                .collect();
            if let (false, Some(stream)) = (failed.is_empty(), &group.stream) {
                for f in failed {
                    let who = f.input.as_deref().map_or_else(
                        || "a participant".to_owned(),
                        |i| E164::parse(i).map_or_else(|_| i.to_owned(), |p| p.to_string()),
                    );
                    let reason = WaError::describe(&f.errors);
                    effects.push(self.post(
                        stream,
                        "symphony/effect_failed",
                        json!({"what": format!("remove {who} from the WhatsApp group"), "reason": reason}),
                    )?);
                }
            }
            return Ok(effects);
        }
        for user in users {
            let contacts = tx.contacts(group.key)?;
            let Some(phone) = identify(&contacts, user) else { continue };
            let Some(c) = contacts.iter().find(|c| c.phone == phone) else { continue };
            // A leave can come before the join it follows (webhooks are not ordered): someone
            // approved who left is gone all the same, and a late "added" for them is stale.
            if !matches!(
                c.state,
                ContactState::Joined | ContactState::Requested | ContactState::Invited
            ) {
                continue;
            }
            tx.set_join_request(group.key, &phone, None)?;
            tx.set_contact_state(group.key, &phone, ContactState::Left)?;
            if let Some(stream) = &group.stream {
                effects.push(self.post(
                    stream,
                    "symphony/contact_left",
                    json!({"phone": phone.as_str(), "who": c.shown()}),
                )?);
            }
        }
        Ok(effects)
    }
}

/// `YYYY-MM-DD` (UTC) of a millisecond timestamp, without a date crate.
fn chrono_free_date(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A file size as people read it: `812 bytes`, `3.9 KB`, `12.5 MB`.
fn file_size(bytes: u64) -> String {
    const KB: f64 = 1024.0;
    match bytes as f64 {
        b if b < KB => format!("{bytes} bytes"),
        b if b < KB * KB => format!("{:.1} KB", b / KB),
        b => format!("{:.1} MB", b / KB / KB),
    }
}

/// `YYYY-MM-DD HH:MM UTC` of a millisecond timestamp.
fn utc_minute(ms: i64) -> String {
    let minute_of_day = ms.rem_euclid(86_400_000) / 60_000;
    format!("{} {:02}:{:02} UTC", chrono_free_date(ms), minute_of_day / 60, minute_of_day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> GroupService {
        use crate::config::{TemplateRef, WaTemplatesConfig};
        let t = |name: &str| TemplateRef { name: name.into(), language: "en_US".into() };
        GroupService {
            templates: std::sync::Arc::new(Templates::embedded().expect("templates")),
            settings: GroupSettings {
                features: FeaturesConfig { native_groups: true },
                entitlements: EntitlementsConfig { advisors: vec!["*".into()] },
                wa_templates: WaTemplatesConfig {
                    invitation: t("group_invite_link"),
                    notice: t("group_update"),
                    message: t("group_update"),
                },
                business: Default::default(),
            },
        }
    }

    #[test]
    fn a_replayed_create_queues_its_room_again_and_a_resubmitted_form_is_refused() {
        let groups = service();
        let store = crate::store::Store::open_in_memory().expect("store");
        let who = Requester { user: UserId(7), email: None, stream: StreamId::new("im1") };
        let jane = E164::parse("+447911123456").expect("phone");
        let create = |event: &str| {
            let origin = Origin { key: "form:m1".into(), event: event.into() };
            store.transaction(|tx| {
                let asked = NewGroup {
                    name: "Desk",
                    advisors: &[],
                    contacts: std::slice::from_ref(&jane),
                    standard: false,
                };
                groups.create(tx, &who, asked, &origin)
            })
        };
        let first = create("e1").expect("first");
        assert!(matches!(
            first.as_slice(),
            [Effect::PostMessage { .. }, Effect::CreateRoom { .. }]
        ));
        // The bot stopped before queuing them: the redelivered event queues the room again.
        let replay = create("e1").expect("replay");
        assert!(matches!(replay.as_slice(), [Effect::CreateRoom { .. }]), "{replay:?}");
        // The same form submitted again: refused, nothing to create.
        let again = create("e2").expect("again");
        let [Effect::PostMessage { message_ml, .. }] = again.as_slice() else {
            panic!("a refusal: {again:?}")
        };
        assert!(message_ml.contains("This form already created Desk"), "{message_ml}");
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(file_size(812), "812 bytes");
        assert_eq!(file_size(4_000), "3.9 KB");
        assert_eq!(file_size(13_107_200), "12.5 MB");
    }

    #[test]
    fn minutes_are_utc() {
        assert_eq!(utc_minute(1_795_526_391_602), "2026-11-24 13:19 UTC");
        assert_eq!(utc_minute(951_782_400_000 - 60_000), "2000-02-28 23:59 UTC");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(chrono_free_date(0), "1970-01-01");
        assert_eq!(chrono_free_date(1_795_526_391_602), "2026-11-24");
        assert_eq!(chrono_free_date(951_782_400_000), "2000-02-29");
    }
}
