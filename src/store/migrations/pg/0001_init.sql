-- The PostgreSQL schema: the same tables and columns as the SQLite store at its version 11
-- (src/store/migrations/0001…0011), in one file. Times are ms since the Unix epoch (BIGINT), as
-- in SQLite; flags are BOOLEAN. `seq` columns keep insertion order where SQLite used its rowid.

-- Inbound events from both transports, persisted before anything acts on them.
-- (source, dedupe_key) recognises redeliveries, from any instance.
CREATE TABLE inbound_events (
    id           BIGSERIAL PRIMARY KEY,
    source       TEXT   NOT NULL,
    dedupe_key   TEXT   NOT NULL,
    payload      TEXT   NOT NULL,
    received_at  BIGINT NOT NULL,
    processed_at BIGINT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    failed_at    BIGINT,
    last_error   TEXT,
    UNIQUE (source, dedupe_key)
);
CREATE INDEX inbound_events_pending ON inbound_events (id) WHERE processed_at IS NULL AND failed_at IS NULL;
CREATE INDEX inbound_events_failed ON inbound_events (id) WHERE failed_at IS NOT NULL;
CREATE INDEX inbound_events_processed ON inbound_events (processed_at) WHERE processed_at IS NOT NULL;

-- Side effects to perform, written in the same transaction as the decision that caused them.
-- `head` marks the one effect of each order key that may run now.
CREATE TABLE outbox (
    id          BIGSERIAL PRIMARY KEY,
    order_key   TEXT    NOT NULL,
    effect      TEXT    NOT NULL,
    attempts    BIGINT  NOT NULL DEFAULT 0,
    next_at     BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    done_at     BIGINT,
    failed_at   BIGINT,
    last_error  TEXT,
    head        BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX outbox_by_key ON outbox (order_key, id) WHERE done_at IS NULL AND failed_at IS NULL;
CREATE INDEX outbox_due_heads ON outbox (next_at, id) WHERE head;
CREATE INDEX outbox_finished_done ON outbox (done_at) WHERE done_at IS NOT NULL;
CREATE INDEX outbox_finished_failed ON outbox (failed_at) WHERE failed_at IS NOT NULL;

-- Groups: a Symphony room and (for native groups) its WhatsApp group.
CREATE TABLE groups (
    id                BIGSERIAL PRIMARY KEY,
    stream_id         TEXT UNIQUE,
    wa_group_id       TEXT UNIQUE,
    create_request_id TEXT UNIQUE,
    name              TEXT    NOT NULL,
    kind              TEXT    NOT NULL CHECK (kind IN ('native', 'standard')),
    state             TEXT    NOT NULL,
    creator           BIGINT  NOT NULL,
    created_at        BIGINT  NOT NULL,
    invite_link       TEXT,
    room_attempted    BOOLEAN NOT NULL DEFAULT FALSE,
    wa_attempted      BOOLEAN NOT NULL DEFAULT FALSE,
    origin            TEXT UNIQUE,
    origin_event      TEXT,
    ref               TEXT UNIQUE
);
CREATE INDEX groups_awaiting ON groups (id) WHERE state IN ('creating', 'awaitingGroup');

CREATE TABLE group_advisors (
    group_id BIGINT  NOT NULL REFERENCES groups (id),
    user_id  BIGINT  NOT NULL,
    owner    BOOLEAN NOT NULL DEFAULT FALSE,
    seq      BIGSERIAL,
    PRIMARY KEY (group_id, user_id)
);

CREATE TABLE group_contacts (
    group_id        BIGINT NOT NULL REFERENCES groups (id),
    phone           TEXT   NOT NULL,
    bsuid           TEXT,
    state           TEXT   NOT NULL CHECK (state IN ('invited', 'requested', 'joined', 'left', 'removed')),
    updated_at      BIGINT NOT NULL,
    join_request_id TEXT,
    name            TEXT,
    seq             BIGSERIAL,
    PRIMARY KEY (group_id, phone)
);
CREATE INDEX group_contacts_by_phone ON group_contacts (phone);
CREATE INDEX group_contacts_by_bsuid ON group_contacts (bsuid) WHERE bsuid IS NOT NULL;

-- Contacts removed from a group: barred from it for ever. Rows are never deleted.
CREATE TABLE bars (
    group_id  BIGINT NOT NULL REFERENCES groups (id),
    phone     TEXT   NOT NULL,
    barred_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, phone)
);
CREATE FUNCTION bars_are_for_ever() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the bar list is never cleared';
END
$$;
CREATE TRIGGER bars_are_for_ever BEFORE DELETE ON bars
    FOR EACH ROW EXECUTE FUNCTION bars_are_for_ever();
CREATE TRIGGER bars_are_never_truncated BEFORE TRUNCATE ON bars
    FOR EACH STATEMENT EXECUTE FUNCTION bars_are_for_ever();

-- Every WhatsApp message the bot relayed or received, with the Symphony message on the other side.
CREATE TABLE wa_messages (
    wa_message_id       TEXT PRIMARY KEY,
    group_id            BIGINT  NOT NULL REFERENCES groups (id),
    direction           TEXT    NOT NULL CHECK (direction IN ('in', 'out')),
    phone               TEXT,
    symphony_message_id TEXT,
    author              TEXT    NOT NULL,
    excerpt             TEXT    NOT NULL,
    body                TEXT,
    fallback_sent       BOOLEAN NOT NULL DEFAULT FALSE,
    kind                TEXT    NOT NULL,
    created_at          BIGINT  NOT NULL,
    seq                 BIGSERIAL
);
CREATE INDEX wa_messages_by_phone ON wa_messages (phone, direction, created_at);
CREATE INDEX wa_messages_by_age ON wa_messages (created_at);

-- When each WhatsApp chat last heard from a contact (the customer-service window).
CREATE TABLE wa_windows (
    chat            TEXT PRIMARY KEY,
    last_inbound_at BIGINT NOT NULL
);

-- One row rewritten by every `/healthz` probe.
CREATE TABLE health_probe (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at BIGINT NOT NULL
);

-- How far the Symphony side has been received (pod time, ms).
CREATE TABLE symphony_watermark (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    latest_ms BIGINT NOT NULL,
    first_ms  BIGINT NOT NULL
);
