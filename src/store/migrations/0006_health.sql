-- One row rewritten by every `/healthz` probe: a cheap real write that proves the store takes
-- writes (not locked by another process, not read-only, disk not full).
CREATE TABLE health_probe (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at INTEGER NOT NULL
);
