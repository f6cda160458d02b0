-- Side effects to perform (Symphony messages, WhatsApp calls), written in the same transaction as
-- the processed mark of the event that caused them, performed and retried by the executor.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Effects of one key (a stream or a group) are performed in order.
    order_key   TEXT    NOT NULL,
    effect      TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    done_at     INTEGER,
    failed_at   INTEGER,
    last_error  TEXT
);
CREATE INDEX outbox_due ON outbox (done_at, failed_at, next_at, id);
