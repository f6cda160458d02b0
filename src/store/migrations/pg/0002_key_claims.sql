-- Who decides each key's events now (DESIGN.md §7): one instance at a time, until its claim
-- expires (on the database's clock). `token` comes from a sequence: it grows with every
-- takeover, so a holder that stalled past its expiry is told apart from the one that took over.
CREATE SEQUENCE key_claim_tokens;
CREATE TABLE key_claims (
    key        TEXT PRIMARY KEY,
    owner      TEXT        NOT NULL,
    token      BIGINT      NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
