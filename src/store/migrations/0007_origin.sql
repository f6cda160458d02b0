-- What asked for each group: the command's datafeed event, or the create form's message (one
-- group per form). Recorded with the group, so that a replayed event or a form submitted twice
-- never makes a second group. `origin_event` tells a replay (same event) from a resubmission.
ALTER TABLE groups ADD COLUMN origin TEXT;
ALTER TABLE groups ADD COLUMN origin_event TEXT;
CREATE UNIQUE INDEX groups_by_origin ON groups (origin);
