-- A contact's WhatsApp profile name, once a webhook showed it (a delivered invitation, a
-- message): confirmations name people as people do.
ALTER TABLE group_contacts ADD COLUMN name TEXT;
