-- The decision core (one transaction per event, order per key, set-aside events, guards).

-- Inbound events: attempts, and a set-aside (dead-letter) mark for an event that keeps failing.
ALTER TABLE inbound_events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE inbound_events ADD COLUMN failed_at INTEGER;
ALTER TABLE inbound_events ADD COLUMN last_error TEXT;
DROP INDEX inbound_events_pending;
CREATE INDEX inbound_events_pending ON inbound_events (id) WHERE processed_at IS NULL AND failed_at IS NULL;
CREATE INDEX inbound_events_failed ON inbound_events (id) WHERE failed_at IS NOT NULL;
CREATE INDEX inbound_events_processed ON inbound_events (processed_at) WHERE processed_at IS NOT NULL;

-- The join request a contact has pending (rejected when they are removed meanwhile).
ALTER TABLE group_contacts ADD COLUMN join_request_id TEXT;

-- A group's own marker, put on what the bot creates for it (the room's keyword, the WhatsApp
-- group's description): after a lost answer, only what carries it is adopted.
ALTER TABLE groups ADD COLUMN ref TEXT;
CREATE UNIQUE INDEX groups_by_ref ON groups (ref);

-- The outbox head of each order key: the one effect of that key that may run now. Claiming
-- the due heads reads this partial index, whatever the backlog behind them.
ALTER TABLE outbox ADD COLUMN head INTEGER NOT NULL DEFAULT 0;
UPDATE outbox SET head = 1
 WHERE done_at IS NULL AND failed_at IS NULL
   AND id = (SELECT MIN(p.id) FROM outbox p
              WHERE p.order_key = outbox.order_key AND p.done_at IS NULL AND p.failed_at IS NULL);
DROP INDEX outbox_due;
CREATE INDEX outbox_due_heads ON outbox (next_at, id) WHERE head = 1;
CREATE INDEX outbox_finished ON outbox (id) WHERE done_at IS NOT NULL OR failed_at IS NOT NULL;
CREATE INDEX wa_messages_by_age ON wa_messages (created_at);
CREATE INDEX outbox_pending ON outbox (id) WHERE done_at IS NULL AND failed_at IS NULL;
CREATE INDEX outbox_given_up ON outbox (id) WHERE failed_at IS NOT NULL;
