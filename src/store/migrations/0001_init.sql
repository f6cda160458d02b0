-- Inbound events from both transports, persisted before anything acts on them.
-- (source, dedupe_key) recognises redeliveries: the datafeed event id, or the webhook change key.
CREATE TABLE inbound_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    source       TEXT    NOT NULL,
    dedupe_key   TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    received_at  INTEGER NOT NULL,
    processed_at INTEGER,
    UNIQUE (source, dedupe_key)
);
CREATE INDEX inbound_events_pending ON inbound_events (processed_at, id);
