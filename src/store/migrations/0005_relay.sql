-- Every WhatsApp message the bot relayed or received, with the Symphony message on the other
-- side: replies (context.id) and delivery failures (statuses) are traced back through it.
CREATE TABLE wa_messages (
    wa_message_id       TEXT PRIMARY KEY,
    group_id            INTEGER NOT NULL REFERENCES groups (id),
    direction           TEXT    NOT NULL CHECK (direction IN ('in', 'out')),
    phone               TEXT,              -- the contact: a 1:1 recipient, or the sender
    symphony_message_id TEXT,              -- the Symphony message on the other side, once known
    author              TEXT    NOT NULL,  -- who wrote it, as shown to people
    excerpt             TEXT    NOT NULL,  -- the start of its text, for quotes and reports
    body                TEXT,              -- what was sent (out), to resend it as a template
    fallback_sent       INTEGER NOT NULL DEFAULT 0, -- resent as a template after 131047
    kind                TEXT    NOT NULL,  -- text | template | media
    created_at          INTEGER NOT NULL
);
CREATE INDEX wa_messages_by_phone ON wa_messages (phone, direction, created_at);

-- When each WhatsApp chat (a group id, or a contact's phone for 1:1) last heard from a contact:
-- free-form messages may be sent there for 24 hours after (the customer-service window).
CREATE TABLE wa_windows (
    chat            TEXT PRIMARY KEY,
    last_inbound_at INTEGER NOT NULL
);

-- The executor asks for the oldest pending effect of each order key.
CREATE INDEX outbox_by_key ON outbox (order_key, done_at, failed_at, id);
