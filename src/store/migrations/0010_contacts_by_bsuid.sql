-- Username users come without their number: their contact is found by the business-scoped
-- user id WhatsApp gave them.
CREATE INDEX group_contacts_by_bsuid ON group_contacts (bsuid) WHERE bsuid IS NOT NULL;
