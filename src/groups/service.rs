//! The group lifecycle: decides, from commands, webhooks and the outcome of earlier effects,
//! what to record in the store and which effects to queue. It performs no network call itself:
//! effects are data that the executor performs (DESIGN.md §3).

use serde_json::json;

use crate::config::{EntitlementsConfig, FeaturesConfig, WaTemplatesConfig};
use crate::effects::Effect;
use crate::events::whatsapp::{WaError, WaUser};
use crate::groups::rules::{self, ContactState, GroupKind, JoinDecision};
use crate::groups::{E164, GroupId, StreamId, UserId};
use crate::store::{GroupKey, GroupState, Store, StoreError};
use crate::templates::{TemplateError, Templates};
use crate::whatsapp::{Recipient, TemplateParam};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// What the lifecycle needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub features: FeaturesConfig,
    pub entitlements: EntitlementsConfig,
    pub wa_templates: WaTemplatesConfig,
}

pub struct GroupService {
    pub store: Store,
    pub templates: std::sync::Arc<Templates>,
    pub settings: GroupSettings,
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
        Ok(Effect::PostMessage {
            stream: stream.clone(),
            message_ml: self.templates.render(template, &data)?,
        })
    }

    /// `/wa create`: checks the entitlement, records the group, and starts with the room.
    pub fn create(
        &self,
        who: &Requester,
        name: &str,
        advisors: &[UserId],
        contacts: &[E164],
        standard: bool,
    ) -> Result<Vec<Effect>, ServiceError> {
        if !rules::entitled(&self.settings.entitlements.advisors, who.user, who.email.as_deref()) {
            let reply = self.templates.usage(
                "You are not entitled to create WhatsApp groups; ask your administrator to add you.",
                "/wa help",
            )?;
            return Ok(vec![Effect::PostMessage { stream: who.stream.clone(), message_ml: reply }]);
        }
        let (kind, reason) =
            rules::group_kind(contacts.len(), standard, self.settings.features.native_groups);
        let key = self.store.create_group(name, kind, who.user, advisors, contacts)?;
        let started = self.post(
            &who.stream,
            "symphony/create_started",
            json!({"name": name, "native": kind == GroupKind::Native, "reason": reason.map(|r| r.to_string()).unwrap_or_default()}),
        )?;
        Ok(vec![started, Effect::CreateRoom { group: key.0 }])
    }

    /// The room of a new group exists: members, owners, then the WhatsApp group (native) or
    /// the summary (standard).
    pub fn after_room_created(
        &self,
        key: GroupKey,
        stream: &StreamId,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = self.store.group(key)? else { return Ok(Vec::new()) };
        let mut effects = Vec::new();
        for (user, owner) in self.store.advisors(key)? {
            effects.push(Effect::AddMember { stream: stream.clone(), user });
            if owner {
                effects.push(Effect::PromoteOwner { stream: stream.clone(), user });
            }
        }
        let contacts: Vec<String> =
            self.store.contacts(key)?.into_iter().map(|c| c.phone.as_str().to_owned()).collect();
        match group.kind {
            GroupKind::Native => effects.push(Effect::CreateWaGroup { group: key.0 }),
            GroupKind::Standard => {
                let (_, reason) =
                    rules::group_kind(contacts.len(), false, self.settings.features.native_groups);
                let reason =
                    reason.map(|r| r.to_string()).unwrap_or_else(|| "--standard was given".into());
                self.store.set_group_state(key, GroupState::Active)?;
                effects.push(self.post(
                    stream,
                    "symphony/standard_ready",
                    json!({"name": group.name, "reason": reason, "contacts": contacts}),
                )?);
            }
        }
        Ok(effects)
    }

    /// The WhatsApp group description: the Symphony members' names.
    pub fn description(&self, names: &[String]) -> Result<String, ServiceError> {
        let text = self.templates.render("whatsapp/description", &json!({"members": names}))?;
        Ok(text.chars().take(crate::whatsapp::MAX_DESCRIPTION_CHARS).collect())
    }

    /// `group_create` webhook: invitations to every contact, the summary in the room.
    pub fn on_group_created(
        &self,
        request_id: &str,
        wa: &GroupId,
        link: Option<&str>,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = self.store.group_by_request(request_id)? else {
            tracing::info!(request_id, "group_create for a request this bot did not make; ignored");
            return Ok(Vec::new());
        };
        if group.wa_group.is_some() {
            return Ok(Vec::new()); // already handled (a redelivery under another key)
        }
        self.store.set_group_created(group.key, wa, link)?;
        let invitation = &self.settings.wa_templates.invitation;
        let mut effects = Vec::new();
        let mut invited = Vec::new();
        for contact in self.store.contacts(group.key)? {
            if contact.barred || contact.state != ContactState::Invited {
                continue;
            }
            invited.push(contact.phone.as_str().to_owned());
            effects.push(Effect::SendWaTemplate {
                order: wa.as_str().to_owned(),
                to: Recipient::Phone(contact.phone),
                name: invitation.name.clone(),
                language: invitation.language.clone(),
                params: vec![TemplateParam::GroupId(wa.clone())],
            });
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
        request_id: &str,
        errors: &[WaError],
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = self.store.group_by_request(request_id)? else { return Ok(Vec::new()) };
        self.store.set_group_state(group.key, GroupState::Failed)?;
        let reason = errors
            .iter()
            .map(|e| {
                format!(
                    "{} ({})",
                    e.message.clone().or_else(|| e.title.clone()).unwrap_or_default(),
                    e.code
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
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
    pub fn on_join_request(
        &self,
        wa: &GroupId,
        request_id: &str,
        user: &WaUser,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = self.store.group_by_wa(wa)? else { return Ok(Vec::new()) };
        let phone = user.wa_id.as_deref().and_then(|p| E164::parse(p).ok());
        let contacts = self.store.contacts(group.key)?;
        match rules::join_decision(phone.as_ref(), &contacts) {
            JoinDecision::Approve => {
                if let Some(p) = &phone {
                    if contacts.iter().any(|c| &c.phone == p && c.state != ContactState::Joined) {
                        self.store.set_contact_state(group.key, p, ContactState::Requested)?;
                    }
                    if let Some(bsuid) = &user.user_id {
                        self.store.set_contact_bsuid(group.key, p, bsuid)?;
                    }
                }
                Ok(vec![Effect::ApproveJoin {
                    group: wa.clone(),
                    request_id: request_id.to_owned(),
                }])
            }
            JoinDecision::Reject(reason) => {
                let shown = phone
                    .as_ref()
                    .map_or_else(|| "an unknown number".to_owned(), |p| p.as_str().to_owned());
                let mut effects = vec![Effect::RejectJoin {
                    group: wa.clone(),
                    request_id: request_id.to_owned(),
                }];
                if let Some(stream) = &group.stream {
                    effects.push(self.post(
                        stream,
                        "symphony/join_rejected",
                        json!({"phone": shown, "reason": reason.to_string()}),
                    )?);
                }
                Ok(effects)
            }
        }
    }

    /// `group_participants_add`: confirmed on both sides; once every invitee is in, the link is
    /// reset so a leaked copy is dead.
    pub fn on_participants_added(
        &self,
        wa: &GroupId,
        users: &[WaUser],
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some(group) = self.store.group_by_wa(wa)? else { return Ok(Vec::new()) };
        let mut effects = Vec::new();
        let notice = &self.settings.wa_templates.notice;
        for user in users {
            let Some(phone) =
                user.wa_id.as_deref().or(user.input.as_deref()).and_then(|p| E164::parse(p).ok())
            else {
                continue;
            };
            let known = self.store.contacts(group.key)?.into_iter().find(|c| c.phone == phone);
            if known.as_ref().is_some_and(|c| c.state == ContactState::Joined) {
                continue; // already confirmed
            }
            self.store.set_contact_state(group.key, &phone, ContactState::Joined)?;
            if let Some(stream) = &group.stream {
                effects.push(self.post(
                    stream,
                    "symphony/contact_joined",
                    json!({"phone": phone.as_str()}),
                )?);
            }
            let text = self.templates.render("whatsapp/joined", &json!({"name": group.name}))?;
            effects.push(Effect::SendWaTemplate {
                order: wa.as_str().to_owned(),
                to: Recipient::Phone(phone),
                name: notice.name.clone(),
                language: notice.language.clone(),
                params: vec![TemplateParam::Text(text)],
            });
        }
        if !effects.is_empty() && rules::all_invitees_joined(&self.store.contacts(group.key)?) {
            effects.push(Effect::ResetInviteLink { group: wa.clone() });
        }
        Ok(effects)
    }
}
