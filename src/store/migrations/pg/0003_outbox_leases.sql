-- Outbox heads are leased to the instance performing them (DESIGN.md §7): another instance
-- skips a head leased until later; a dead instance's lease expires and another instance
-- performs the effect (at least once). Times on the database's clock.
ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
ALTER TABLE outbox ADD COLUMN lease_until TIMESTAMPTZ;
