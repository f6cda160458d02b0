-- Groups: a Symphony room and (for native groups) its WhatsApp group.
CREATE TABLE groups (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id         TEXT UNIQUE,            -- the Symphony room, once created
    wa_group_id       TEXT UNIQUE,            -- the WhatsApp group, once its group_create webhook came
    create_request_id TEXT UNIQUE,            -- the pending WhatsApp create call
    name              TEXT    NOT NULL,
    kind              TEXT    NOT NULL CHECK (kind IN ('native', 'standard')),
    state             TEXT    NOT NULL,       -- creating | awaitingGroup | active | failed | closed
    creator           INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    invite_link       TEXT
);

-- Advisors (Symphony users) of a group, with their owner flag as last seen.
CREATE TABLE group_advisors (
    group_id INTEGER NOT NULL REFERENCES groups (id),
    user_id  INTEGER NOT NULL,
    owner    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, user_id)
);

-- WhatsApp contacts of a group and where they stand.
CREATE TABLE group_contacts (
    group_id   INTEGER NOT NULL REFERENCES groups (id),
    phone      TEXT    NOT NULL,              -- E.164 with +
    bsuid      TEXT,                          -- business-scoped user id, once seen
    state      TEXT    NOT NULL CHECK (state IN ('invited', 'requested', 'joined', 'left', 'removed')),
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, phone)
);

-- Contacts removed from a group: barred from it for ever. Rows are never deleted.
CREATE TABLE bars (
    group_id  INTEGER NOT NULL REFERENCES groups (id),
    phone     TEXT    NOT NULL,
    barred_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, phone)
);
CREATE TRIGGER bars_are_for_ever BEFORE DELETE ON bars
BEGIN
    SELECT RAISE(ABORT, 'the bar list is never cleared');
END;
