-- How far the Symphony side has been received: the pod timestamp (ms) of the latest event
-- persisted in inbound_events, and of the first one ever recorded here. After a datafeed is lost
-- the bot reads the messages posted since (catch-up, src/symphony/catchup.rs), never before `first_ms`:
-- messages received before this table existed were recorded under other dedupe keys.
CREATE TABLE symphony_watermark (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    latest_ms INTEGER NOT NULL,
    first_ms  INTEGER NOT NULL
);
