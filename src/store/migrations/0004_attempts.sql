-- Set just before the bot asks Symphony for a group's room / WhatsApp for its group: if a crash
-- (or a lost answer) leaves the result unrecorded, the retry looks for what was created instead
-- of creating a second one.
ALTER TABLE groups ADD COLUMN room_attempted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE groups ADD COLUMN wa_attempted INTEGER NOT NULL DEFAULT 0;
