-- Effects are looked up by their order key only while pending (the key's head, whether it has
-- one): the key index holds pending effects alone, as PostgreSQL's does, so a done mark only
-- takes an entry out of it instead of moving it. It also counts the pending effects, which the
-- index of pending ids was kept for.
DROP INDEX outbox_by_key;
CREATE INDEX outbox_by_key ON outbox (order_key, id) WHERE done_at IS NULL AND failed_at IS NULL;
DROP INDEX outbox_pending;
