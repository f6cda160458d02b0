//! The SQL of the group state and the queue operations that commit with a decision, on one
//! SQLite connection inside a transaction.

use rusqlite::{Connection, OptionalExtension, params};

use super::{GroupRepo, QueuedEffect, Source, StoreError, Tx, now_ms};
use crate::domain::{
    ContactRecord, ContactState, Created, E164, GroupId, GroupKey, GroupKind, GroupRecord,
    GroupState, Origin, StreamId, UserId, WaMessageRecord,
};

/// Group state and queue writes on a connection whose transaction the caller holds.
pub(super) struct SqlTx<'c>(pub(super) &'c Connection);

const GROUP_COLUMNS: &str = "id, stream_id, wa_group_id, create_request_id, name, kind, state, creator, created_at, invite_link, ref";

fn kind_str(kind: GroupKind) -> &'static str {
    match kind {
        GroupKind::Native => "native",
        GroupKind::Standard => "standard",
    }
}

fn group_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GroupRecord> {
    let kind: String = r.get(5)?;
    let state: String = r.get(6)?;
    let bad = |what: &str, v: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("bad {what} {v:?}").into(),
        )
    };
    Ok(GroupRecord {
        key: GroupKey(r.get(0)?),
        stream: r.get::<_, Option<String>>(1)?.map(StreamId::new),
        wa_group: r.get::<_, Option<String>>(2)?.map(GroupId),
        create_request_id: r.get(3)?,
        name: r.get(4)?,
        kind: match kind.as_str() {
            "native" => GroupKind::Native,
            "standard" => GroupKind::Standard,
            other => return Err(bad("kind", other)),
        },
        state: GroupState::parse(&state).ok_or_else(|| bad("state", &state))?,
        creator: UserId(r.get(7)?),
        created_at: r.get(8)?,
        invite_link: r.get(9)?,
        reference: r.get(10)?,
    })
}

impl SqlTx<'_> {
    fn group_where(
        &self,
        clause: &str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<Option<GroupRecord>, StoreError> {
        let sql = format!("SELECT {GROUP_COLUMNS} FROM groups WHERE {clause} = ?1");
        Ok(self.0.prepare_cached(&sql)?.query_row([value], group_row).optional()?)
    }
}

/// An effect queued: its key's head when the key has nothing pending.
pub(super) const QUEUE_EFFECT_SQL: &str =
    "INSERT INTO outbox (order_key, effect, next_at, created_at, head)
     VALUES (?1, ?2, ?3, ?3, NOT EXISTS (SELECT 1 FROM outbox WHERE order_key = ?1
                                         AND done_at IS NULL AND failed_at IS NULL))";

/// A key's next pending effect becomes its head.
pub(super) const NEXT_HEAD_SQL: &str =
    "UPDATE outbox SET head = 1 WHERE id = (SELECT MIN(id) FROM outbox
     WHERE order_key = ?1 AND done_at IS NULL AND failed_at IS NULL)";

/// Inserts effects into the outbox; an effect whose key has nothing pending is its key's head.
fn queue_effects(conn: &Connection, effects: &[QueuedEffect], now: i64) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(QUEUE_EFFECT_SQL)?;
    for (key, effect) in effects {
        insert.execute(params![key, serde_json::to_string(effect)?, now])?;
    }
    Ok(())
}

impl Tx for SqlTx<'_> {
    fn queue_effects(&self, effects: &[QueuedEffect]) -> Result<(), StoreError> {
        queue_effects(self.0, effects, now_ms())
    }

    fn mark_processed(&self, inbound_id: i64) -> Result<bool, StoreError> {
        let changed = self
            .0
            .prepare_cached(
                "UPDATE inbound_events SET processed_at = ?2, failed_at = NULL
             WHERE id = ?1 AND processed_at IS NULL",
            )?
            .execute(params![inbound_id, now_ms()])?;
        Ok(changed == 1)
    }

    fn enqueue_inbound(
        &self,
        source: Source,
        dedupe_key: &str,
        payload: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let text = serde_json::to_string(payload)?;
        super::sqlite::insert_inbound(self.0, source, dedupe_key, &text)
    }

    fn insert_inbound(
        &self,
        source: Source,
        dedupe_key: &str,
        payload: &serde_json::value::RawValue,
    ) -> Result<Option<i64>, StoreError> {
        let fresh = super::sqlite::insert_inbound(self.0, source, dedupe_key, payload.get())?;
        Ok(fresh.then(|| self.0.last_insert_rowid()))
    }

    fn has_undecided(&self) -> Result<bool, StoreError> {
        let found = self
            .0
            .prepare_cached(
                "SELECT 1 FROM inbound_events WHERE processed_at IS NULL AND failed_at IS NULL
                 LIMIT 1",
            )?
            .query_row([], |_| Ok(()))
            .optional()?;
        Ok(found.is_some())
    }

    fn savepoint(&self, f: &mut dyn FnMut() -> bool) -> Result<bool, StoreError> {
        // Prepared once: every decision made on receipt takes one (parsed each time, ~1%).
        self.0.prepare_cached("SAVEPOINT within")?.execute([])?;
        let keep = f();
        if !keep {
            self.0.prepare_cached("ROLLBACK TO SAVEPOINT within")?.execute([])?;
        }
        self.0.prepare_cached("RELEASE SAVEPOINT within")?.execute([])?;
        Ok(keep)
    }

    fn advance_symphony_watermark(&self, at_ms: i64) -> Result<(), StoreError> {
        super::sqlite::advance_watermark(self.0, at_ms)
    }

    fn finish_effect(&self, id: i64, error: Option<&str>) -> Result<(), StoreError> {
        let now = now_ms();
        // The effect's order key comes back from its own update: its successor becomes the head.
        let key: Option<String> = match error {
            None => self
                .0
                .prepare_cached(
                    "UPDATE outbox SET done_at = ?2, head = 0, last_error = NULL WHERE id = ?1
                     RETURNING order_key",
                )?
                .query_row(params![id, now], |r| r.get(0))
                .optional()?,
            Some(error) => self
                .0
                .prepare_cached(
                    "UPDATE outbox SET attempts = attempts + 1, failed_at = ?2, head = 0,
                            last_error = ?3
                     WHERE id = ?1 RETURNING order_key",
                )?
                .query_row(params![id, now, error], |r| r.get(0))
                .optional()?,
        };
        if let Some(key) = key {
            self.0.prepare_cached(NEXT_HEAD_SQL)?.execute([key])?;
        }
        Ok(())
    }
}

impl GroupRepo for SqlTx<'_> {
    fn create_group(
        &self,
        name: &str,
        kind: GroupKind,
        creator: UserId,
        advisors: &[UserId],
        contacts: &[E164],
        origin: &Origin,
        reference: &str,
    ) -> Result<Created, StoreError> {
        let tx = self.0;
        let now = now_ms();
        let earlier: Option<(i64, Option<String>)> = tx
            .query_row(
                "SELECT id, origin_event FROM groups WHERE origin = ?1",
                [&origin.key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((id, event)) = earlier {
            return Ok(if event.as_deref() == Some(origin.event.as_str()) {
                Created::Replay(GroupKey(id))
            } else {
                Created::Again(GroupKey(id))
            });
        }
        tx.execute(
            "INSERT INTO groups (name, kind, state, creator, created_at, origin, origin_event, ref)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                name,
                kind_str(kind),
                GroupState::Creating.as_str(),
                creator.0,
                now,
                origin.key,
                origin.event,
                reference
            ],
        )?;
        let key = GroupKey(tx.last_insert_rowid());
        tx.execute(
            "INSERT INTO group_advisors (group_id, user_id, owner) VALUES (?1, ?2, 1)",
            params![key.0, creator.0],
        )?;
        for a in advisors.iter().filter(|a| **a != creator) {
            tx.execute(
                "INSERT OR IGNORE INTO group_advisors (group_id, user_id, owner) VALUES (?1, ?2, 0)",
                params![key.0, a.0],
            )?;
        }
        for c in contacts {
            tx.execute(
                "INSERT OR IGNORE INTO group_contacts (group_id, phone, state, updated_at) VALUES (?1, ?2, 'invited', ?3)",
                params![key.0, c.as_str(), now],
            )?;
        }
        Ok(Created::New(key))
    }

    fn group(&self, key: GroupKey) -> Result<Option<GroupRecord>, StoreError> {
        self.group_where("id", &key.0)
    }

    fn group_by_stream(&self, stream: &StreamId) -> Result<Option<GroupRecord>, StoreError> {
        self.group_where("stream_id", &stream.as_str())
    }

    fn group_by_wa(&self, group: &GroupId) -> Result<Option<GroupRecord>, StoreError> {
        self.group_where("wa_group_id", &group.as_str())
    }

    fn group_by_request(&self, request_id: &str) -> Result<Option<GroupRecord>, StoreError> {
        self.group_where("create_request_id", &request_id)
    }

    fn set_group_stream(&self, key: GroupKey, stream: &StreamId) -> Result<bool, StoreError> {
        let changed = self.0.execute(
            "UPDATE groups SET stream_id = ?2 WHERE id = ?1 AND stream_id IS NULL",
            params![key.0, stream.as_str()],
        )?;
        Ok(changed == 1)
    }

    fn set_group_request(&self, key: GroupKey, request_id: &str) -> Result<bool, StoreError> {
        let changed = self.0.execute(
            "UPDATE groups SET create_request_id = ?2, state = ?3
             WHERE id = ?1 AND state = ?4 AND wa_group_id IS NULL",
            params![
                key.0,
                request_id,
                GroupState::AwaitingGroup.as_str(),
                GroupState::Creating.as_str()
            ],
        )?;
        Ok(changed == 1)
    }

    fn set_group_created(
        &self,
        key: GroupKey,
        group: &GroupId,
        invite_link: Option<&str>,
    ) -> Result<bool, StoreError> {
        let changed = self.0.execute(
            "UPDATE groups SET wa_group_id = ?2, invite_link = ?3, state = ?4
             WHERE id = ?1 AND wa_group_id IS NULL AND state IN (?5, ?6)",
            params![
                key.0,
                group.as_str(),
                invite_link,
                GroupState::Active.as_str(),
                GroupState::Creating.as_str(),
                GroupState::AwaitingGroup.as_str()
            ],
        )?;
        Ok(changed == 1)
    }

    fn set_invite_link(&self, key: GroupKey, invite_link: &str) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE groups SET invite_link = ?2 WHERE id = ?1",
            params![key.0, invite_link],
        )?;
        Ok(())
    }

    fn set_group_state(&self, key: GroupKey, state: GroupState) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE groups SET state = ?2 WHERE id = ?1",
            params![key.0, state.as_str()],
        )?;
        Ok(())
    }

    fn rename_group(&self, key: GroupKey, name: &str) -> Result<(), StoreError> {
        self.0.execute("UPDATE groups SET name = ?2 WHERE id = ?1", params![key.0, name])?;
        Ok(())
    }

    fn advisors(&self, key: GroupKey) -> Result<Vec<(UserId, bool)>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT user_id, owner FROM group_advisors WHERE group_id = ?1 ORDER BY rowid",
        )?;
        let rows =
            stmt.query_map([key.0], |r| Ok((UserId(r.get(0)?), r.get::<_, i64>(1)? != 0)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_advisor(
        &self,
        key: GroupKey,
        user: UserId,
        owner: Option<bool>,
    ) -> Result<(), StoreError> {
        match owner {
            Some(owner) => self.0.execute(
                "INSERT INTO group_advisors (group_id, user_id, owner) VALUES (?1, ?2, ?3)
                 ON CONFLICT (group_id, user_id) DO UPDATE SET owner = excluded.owner",
                params![key.0, user.0, owner],
            )?,
            None => self.0.execute(
                "DELETE FROM group_advisors WHERE group_id = ?1 AND user_id = ?2",
                params![key.0, user.0],
            )?,
        };
        Ok(())
    }

    fn contacts(&self, key: GroupKey) -> Result<Vec<ContactRecord>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT c.phone, c.state, EXISTS (SELECT 1 FROM bars b WHERE b.group_id = c.group_id AND b.phone = c.phone), c.bsuid, c.name
             FROM group_contacts c WHERE c.group_id = ?1 ORDER BY c.rowid",
        )?;
        let rows = stmt.query_map([key.0], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (phone, state, barred, bsuid, name) = row?;
            let (Ok(phone), Some(state)) = (E164::parse(&phone), ContactState::parse(&state))
            else {
                tracing::warn!(group = key.0, "skipping an unreadable contact row");
                continue;
            };
            // A barred contact is removed, whatever was written later.
            let state = if barred { ContactState::Removed } else { state };
            out.push(ContactRecord { phone, state, barred, bsuid, name });
        }
        Ok(out)
    }

    fn set_contact_state(
        &self,
        key: GroupKey,
        phone: &E164,
        state: ContactState,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let barred = self.is_barred(key, phone)?;
        let state = if barred { ContactState::Removed } else { state };
        self.0.execute(
            "INSERT INTO group_contacts (group_id, phone, state, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (group_id, phone) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            params![key.0, phone.as_str(), state.as_str(), now],
        )?;
        if state == ContactState::Removed {
            self.0.execute(
                "INSERT OR IGNORE INTO bars (group_id, phone, barred_at) VALUES (?1, ?2, ?3)",
                params![key.0, phone.as_str(), now],
            )?;
        }
        Ok(())
    }

    fn set_contact_bsuid(
        &self,
        key: GroupKey,
        phone: &E164,
        bsuid: &str,
    ) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE group_contacts SET bsuid = ?3 WHERE group_id = ?1 AND phone = ?2",
            params![key.0, phone.as_str(), bsuid],
        )?;
        Ok(())
    }

    fn set_contact_profile(
        &self,
        phone: &E164,
        bsuid: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "UPDATE group_contacts SET bsuid = COALESCE(?2, bsuid), name = COALESCE(?3, name)
                 WHERE phone = ?1",
            )?
            .execute(params![phone.as_str(), bsuid, name])?;
        Ok(())
    }

    fn set_join_request(
        &self,
        key: GroupKey,
        phone: &E164,
        request_id: Option<&str>,
    ) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE group_contacts SET join_request_id = ?3 WHERE group_id = ?1 AND phone = ?2",
            params![key.0, phone.as_str(), request_id],
        )?;
        Ok(())
    }

    fn join_request(&self, key: GroupKey, phone: &E164) -> Result<Option<String>, StoreError> {
        Ok(self
            .0
            .query_row(
                "SELECT join_request_id FROM group_contacts WHERE group_id = ?1 AND phone = ?2",
                params![key.0, phone.as_str()],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }

    fn phone_of_bsuid(&self, bsuid: &str) -> Result<Option<E164>, StoreError> {
        let phone: Option<String> = self
            .0
            .prepare_cached("SELECT phone FROM group_contacts WHERE bsuid = ?1 LIMIT 1")?
            .query_row([bsuid], |r| r.get(0))
            .optional()?;
        Ok(phone.and_then(|p| E164::parse(&p).ok()))
    }

    fn groups_awaiting_request(&self) -> Result<u64, StoreError> {
        let n: i64 = self.0.query_row(
            "SELECT COUNT(*) FROM groups WHERE kind = 'native' AND state = 'creating' AND create_request_id IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn groups_awaiting_webhook(&self, before_ms: i64) -> Result<Vec<GroupRecord>, StoreError> {
        let sql = format!(
            "SELECT {GROUP_COLUMNS} FROM groups WHERE state = 'awaitingGroup' AND created_at <= ?1 ORDER BY id"
        );
        let mut stmt = self.0.prepare_cached(&sql)?;
        let rows = stmt.query_map([before_ms], group_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn is_barred(&self, key: GroupKey, phone: &E164) -> Result<bool, StoreError> {
        let found = self
            .0
            .prepare_cached("SELECT 1 FROM bars WHERE group_id = ?1 AND phone = ?2")?
            .query_row(params![key.0, phone.as_str()], |_| Ok(()))
            .optional()?;
        Ok(found.is_some())
    }

    fn membership_pending(&self, stream: &StreamId) -> Result<bool, StoreError> {
        // Order keys `member:<stream>:<user>` (see `effects::OrderKey`), found by range.
        let from = format!("member:{stream}:");
        let to = format!("member:{stream};");
        let found = self
            .0
            .prepare_cached(
                "SELECT 1 FROM outbox WHERE order_key >= ?1 AND order_key < ?2
                 AND done_at IS NULL AND failed_at IS NULL LIMIT 1",
            )?
            .query_row(params![from, to], |_| Ok(()))
            .optional()?;
        Ok(found.is_some())
    }

    fn barred_at(&self, key: GroupKey, phone: &E164) -> Result<Option<i64>, StoreError> {
        Ok(self
            .0
            .prepare_cached("SELECT barred_at FROM bars WHERE group_id = ?1 AND phone = ?2")?
            .query_row(params![key.0, phone.as_str()], |r| r.get(0))
            .optional()?)
    }

    fn mark_create_attempt(&self, key: GroupKey, room: bool) -> Result<bool, StoreError> {
        let column = if room { "room_attempted" } else { "wa_attempted" };
        let before: i64 = self.0.query_row(
            &format!("SELECT {column} FROM groups WHERE id = ?1"),
            [key.0],
            |r| r.get(0),
        )?;
        self.0.execute(&format!("UPDATE groups SET {column} = 1 WHERE id = ?1"), [key.0])?;
        Ok(before != 0)
    }

    fn record_wa_message(&self, m: &WaMessageRecord) -> Result<(), StoreError> {
        self.0.prepare_cached(
            "INSERT OR IGNORE INTO wa_messages (wa_message_id, group_id, direction, phone, symphony_message_id, author, excerpt, kind, body, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            m.wa_message_id,
            m.group.0,
            if m.inbound { "in" } else { "out" },
            m.phone.as_ref().map(E164::as_str),
            m.symphony_message_id,
            m.author,
            m.excerpt,
            m.kind,
            m.body,
            now_ms()
        ])?;
        Ok(())
    }

    fn wa_message(&self, wa_message_id: &str) -> Result<Option<WaMessageRecord>, StoreError> {
        let row = self
            .0
            .prepare_cached(
                "SELECT wa_message_id, group_id, direction, phone, symphony_message_id, author, excerpt, kind, body
                 FROM wa_messages WHERE wa_message_id = ?1",
            )?
            .query_row([wa_message_id], |r| {
                Ok(WaMessageRecord {
                    wa_message_id: r.get(0)?,
                    group: GroupKey(r.get(1)?),
                    inbound: r.get::<_, String>(2)? == "in",
                    phone: r.get::<_, Option<String>>(3)?.and_then(|p| E164::parse(&p).ok()),
                    symphony_message_id: r.get(4)?,
                    author: r.get(5)?,
                    excerpt: r.get(6)?,
                    kind: r.get(7)?,
                    body: r.get(8)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    fn set_wa_message_symphony(
        &self,
        wa_message_id: &str,
        symphony_message_id: &str,
    ) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE wa_messages SET symphony_message_id = ?2 WHERE wa_message_id = ?1",
            params![wa_message_id, symphony_message_id],
        )?;
        Ok(())
    }

    fn claim_template_fallback(&self, wa_message_id: &str) -> Result<bool, StoreError> {
        let changed = self.0.execute(
            "UPDATE wa_messages SET fallback_sent = 1 WHERE wa_message_id = ?1 AND fallback_sent = 0",
            [wa_message_id],
        )?;
        Ok(changed == 1)
    }

    fn last_group_messaging(&self, phone: &E164) -> Result<Option<GroupKey>, StoreError> {
        let found = self
            .0
            .prepare_cached(
                "SELECT group_id FROM wa_messages WHERE phone = ?1 AND direction = 'out'
                 ORDER BY created_at DESC, rowid DESC LIMIT 1",
            )?
            .query_row([phone.as_str()], |r| r.get(0))
            .optional()?;
        Ok(found.map(GroupKey))
    }

    fn groups_of_contact(&self, phone: &E164) -> Result<Vec<GroupKey>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "SELECT c.group_id FROM group_contacts c JOIN groups g ON g.id = c.group_id
             WHERE c.phone = ?1 AND c.state <> 'removed' AND g.state = 'active'
             ORDER BY c.updated_at DESC, c.group_id DESC",
        )?;
        let rows = stmt.query_map([phone.as_str()], |r| r.get(0).map(GroupKey))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn open_window(&self, chat: &str, at_ms: i64) -> Result<(), StoreError> {
        self.0.prepare_cached(
            "INSERT INTO wa_windows (chat, last_inbound_at) VALUES (?1, ?2)
             ON CONFLICT (chat) DO UPDATE SET last_inbound_at = MAX(last_inbound_at, excluded.last_inbound_at)",
        )?
        .execute(params![chat, at_ms])?;
        Ok(())
    }

    fn last_inbound(&self, chat: &str) -> Result<Option<i64>, StoreError> {
        let found = self
            .0
            .prepare_cached("SELECT last_inbound_at FROM wa_windows WHERE chat = ?1")?
            .query_row([chat], |r| r.get(0))
            .optional()?;
        Ok(found)
    }
}
