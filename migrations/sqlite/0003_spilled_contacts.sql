-- Closed, settled contacts spilled out of the engine's memory (src/engine/spill.rs).
--
-- A contact stays reachable for the correction horizon; once it is closed and
-- unchanged for `[windows] spill_after` it lives here instead of in the engine and in
-- its checkpoint. Rows change only in the partition's fenced commit transaction,
-- together with the checkpoint, so the checkpoint and this table always describe the
-- same moment: a contact is in one or the other.
CREATE TABLE spilled_contacts (
    "partition"   TEXT    NOT NULL,
    -- 128-bit hash of the contact id, big-endian.
    contact_key   BLOB    NOT NULL,
    -- 128-bit hash of the customer id, big-endian; NULL without a customer.
    customer_key  BLOB,
    first_offer   INTEGER,
    -- Latest event time (UTC ms): the row is deleted once the horizon passes it.
    last_ts       INTEGER NOT NULL,
    -- The engine's packed encoding of the contact's events and facts.
    body          BLOB    NOT NULL,
    PRIMARY KEY ("partition", contact_key)
) WITHOUT ROWID;
-- Not partial (as in PostgreSQL): the look-up names it with INDEXED BY, because
-- without statistics SQLite's planner prefers the primary key's "partition" prefix
-- and scans the whole partition per customer look-up.
CREATE INDEX spilled_contacts_customer ON spilled_contacts ("partition", customer_key);
CREATE INDEX spilled_contacts_last_ts ON spilled_contacts ("partition", last_ts);
