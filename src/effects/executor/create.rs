//! Creating what a group needs — its room, its WhatsApp group — so that a lost answer is
//! recognised by the group's marker, never by a name.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Done, EffectExecutor, Failure, permanent};
use crate::domain::{GroupKey, StreamId, UserId};
use crate::effects::Outcome;

/// How long a room's creation waits for the names read beside it (they are read again later if
/// this was not enough).
const NAMES_WAIT: Duration = Duration::from_secs(2);
/// How long a display name read for a new group is taken as current.
const NAME_FRESH_FOR: Duration = Duration::from_secs(60);

/// Display names read a moment ago: a new group's advisors' names are read side by side with
/// its room's creation, so that its WhatsApp group (whose description names them) does not wait
/// for them afterwards.
#[derive(Debug, Default)]
pub struct NameCache(Mutex<HashMap<UserId, (String, Instant)>>);

impl NameCache {
    fn put(&self, names: impl IntoIterator<Item = (UserId, String)>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (_, at)| at.elapsed() < NAME_FRESH_FOR);
        let now = Instant::now();
        map.extend(names.into_iter().map(|(user, name)| (user, (name, now))));
    }

    /// Every one of `users`' names, if all are fresh.
    fn all(&self, users: &[UserId]) -> Option<Vec<String>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        users
            .iter()
            .map(|u| {
                map.get(u).filter(|(_, at)| at.elapsed() < NAME_FRESH_FOR).map(|(n, _)| n.clone())
            })
            .collect()
    }
}

/// The room description and keyword prefix that mark what the bot creates for a group.
pub const ROOM_DESCRIPTION: &str = "WhatsApp group managed by wa-groups-bot";

impl EffectExecutor {
    /// The group's room: recognised by its marker if a lost earlier attempt made it, else made.
    pub(super) async fn create_room(&self, key: GroupKey) -> Result<Done, Failure> {
        let record = self
            .store
            .read(|r| r.group(key))?
            .ok_or_else(|| permanent(format!("group {} is not stored", key.0)))?;
        if let Some(stream) = record.stream {
            return Ok(Done::outcome(Outcome::RoomCreated { group: key, stream }));
        }
        let description = room_description(record.reference.as_deref());
        let earlier = self.store.transaction(|tx| tx.mark_create_attempt(key, true))?;
        if earlier && let Some(stream) = self.find_room(&record.name, &description).await? {
            tracing::warn!(room = %stream, "the room a lost attempt created is adopted by its marker");
            return Ok(Done::outcome(Outcome::RoomCreated { group: key, stream }));
        }
        // The advisors' names, which the WhatsApp group's description needs next, are read
        // meanwhile (a failure here only means they are read again then).
        let names = tokio::time::timeout(NAMES_WAIT, self.read_names(key));
        let (room, _) = tokio::join!(self.symphony.create_room(&record.name, &description), names);
        Ok(Done::outcome(Outcome::RoomCreated { group: key, stream: room?.stream }))
    }

    /// A room of the bot's named `name` whose description is exactly `description` (which
    /// carries the group's marker) and that no group has: what a lost create made.
    pub(super) async fn find_room(
        &self,
        name: &str,
        description: &str,
    ) -> Result<Option<StreamId>, Failure> {
        for (sid, room_name) in self.symphony.my_rooms().await? {
            if room_name != name || self.store.read(|r| r.group_by_stream(&sid))?.is_some() {
                continue;
            }
            if self.symphony.room_info(&sid).await?.description == description {
                return Ok(Some(sid));
            }
        }
        Ok(None)
    }

    /// The WhatsApp group: recognised by its marker if a lost earlier attempt made it, else
    /// asked for (its id and link come by webhook).
    pub(super) async fn create_wa_group(&self, key: GroupKey) -> Result<Done, Failure> {
        let record = self
            .store
            .read(|r| r.group(key))?
            .ok_or_else(|| permanent(format!("group {} is not stored", key.0)))?;
        if record.create_request_id.is_some() || record.wa_group.is_some() {
            return Ok(Done::default()); // already asked; the webhook will come
        }
        let wa = self.whatsapp()?;
        let earlier = self.store.transaction(|tx| tx.mark_create_attempt(key, false))?;
        if earlier
            && let Some(marker) = record.reference.as_deref()
            && let Some(found) = self.find_marked_wa_group(marker).await?
        {
            tracing::warn!(group = %found, "the WhatsApp group a lost attempt created is adopted by its marker");
            let link = wa.invite_link(&found).await?;
            return Ok(Done::outcome(Outcome::WaGroupFound {
                group: key,
                wa_group: found,
                invite_link: Some(link),
            }));
        }
        let description = self.description(key, record.reference.as_deref()).await?;
        let request_id = wa.create_group(&record.name, &description, true).await?;
        Ok(Done::outcome(Outcome::WaGroupRequested { group: key, request_id }))
    }

    /// A WhatsApp group of this number, linked to no group, whose description carries `marker`
    /// (the reconciler's look-up; the error says why the list could not be read).
    pub async fn find_wa_group(
        &self,
        marker: &str,
    ) -> Result<Option<crate::domain::GroupId>, String> {
        self.find_marked_wa_group(marker).await.map_err(|f| f.message)
    }

    pub(super) async fn find_marked_wa_group(
        &self,
        marker: &str,
    ) -> Result<Option<crate::domain::GroupId>, Failure> {
        let wa = self.whatsapp()?;
        for g in wa.all_groups().await? {
            if self.store.read(|r| r.group_by_wa(&g.id))?.is_some() {
                continue;
            }
            let info = wa.group_info(&g.id).await?;
            if info.description.as_deref().is_some_and(|d| carries_marker(d, marker)) {
                return Ok(Some(g.id));
            }
        }
        Ok(None)
    }

    /// The WhatsApp group description: the advisors' current display names, then the marker.
    pub(super) async fn description(
        &self,
        key: GroupKey,
        marker: Option<&str>,
    ) -> Result<String, Failure> {
        let advisors: Vec<_> =
            self.store.read(|r| r.advisors(key))?.into_iter().map(|(user, _)| user).collect();
        let names = match self.names.all(&advisors) {
            Some(names) => names,
            None => {
                self.read_names(key).await?;
                self.names
                    .all(&advisors)
                    .unwrap_or_else(|| advisors.iter().map(ToString::to_string).collect())
            }
        };
        let text = self
            .templates
            .render("whatsapp/description", &serde_json::json!({"members": names}))?;
        Ok(wa_description(&text, marker))
    }
}

impl EffectExecutor {
    /// Reads a group's advisors' display names (one call for them all) into the cache; one
    /// without a display name is shown by their user id.
    async fn read_names(&self, key: GroupKey) -> Result<(), Failure> {
        let advisors: Vec<_> =
            self.store.read(|r| r.advisors(key))?.into_iter().map(|(user, _)| user).collect();
        let found = self.symphony.users_by_ids(&advisors).await?;
        self.names.put(advisors.iter().map(|user| {
            let name = found
                .iter()
                .find(|u| u.id == *user)
                .and_then(|u| u.display_name.clone())
                .unwrap_or_else(|| user.to_string());
            (*user, name)
        }));
        Ok(())
    }
}

/// The description of a group's room: fixed words and the group's marker.
pub fn room_description(marker: Option<&str>) -> String {
    match marker {
        Some(m) => format!("{ROOM_DESCRIPTION} (ref {m})"),
        None => ROOM_DESCRIPTION.to_owned(),
    }
}

/// The WhatsApp description: `text` cut to fit, then the marker on its own last line.
pub fn wa_description(text: &str, marker: Option<&str>) -> String {
    let Some(marker) = marker else {
        return text.chars().take(crate::whatsapp::MAX_DESCRIPTION_CHARS).collect();
    };
    let tail = format!("\nref {marker}");
    let room = crate::whatsapp::MAX_DESCRIPTION_CHARS.saturating_sub(tail.chars().count());
    let mut out: String = text.trim_end().chars().take(room).collect();
    out.push_str(&tail);
    out
}

/// Whether a WhatsApp description ends with the marker line of [`wa_description`].
pub fn carries_marker(description: &str, marker: &str) -> bool {
    description.trim_end().lines().last().is_some_and(|l| l.trim() == format!("ref {marker}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_survives_a_description_at_the_limit_and_is_recognised_exactly() {
        let long = "x".repeat(5_000);
        let d = wa_description(&long, Some("wagb-1a2b3c"));
        assert_eq!(d.chars().count(), crate::whatsapp::MAX_DESCRIPTION_CHARS);
        assert!(carries_marker(&d, "wagb-1a2b3c"));
        assert!(!carries_marker(&d, "wagb-1a2b3"), "a prefix is not the marker");
        assert!(!carries_marker("Alice, Bob\nref wagb-other", "wagb-1a2b3c"));
        assert!(!carries_marker("Alice, Bob", "wagb-1a2b3c"), "same names, no marker");
        assert_eq!(room_description(Some("wagb-9")), format!("{ROOM_DESCRIPTION} (ref wagb-9)"));
    }
}
