-- spilled_contacts as a rowid table with a unique index, instead of WITHOUT ROWID.
--
-- A spilled contact's body is hundreds of bytes to a few KiB. In a WITHOUT ROWID
-- table the whole row lives in the primary key's B-tree, ordered by a hash: few rows
-- fit a page, and each insert lands on a random page and splits it, so a flush that
-- spilled tens of thousands of contacts rewrote most of the table through a page
-- cache that held a sliver of it (SQLite's own advice: WITHOUT ROWID suits rows under
-- about a twentieth of a page). Here the bodies go to the rowid table in insertion
-- order and the key index stays small (docs/performance.md, "Spilling closed
-- contacts"). The rows are copied over: a serving daemon's spilled contacts are part
-- of its committed state.
CREATE TABLE spilled_contacts_new (
    "partition"   TEXT    NOT NULL,
    -- 128-bit hash of the contact id, big-endian.
    contact_key   BLOB    NOT NULL,
    -- 128-bit hash of the customer id, big-endian; NULL without a customer.
    customer_key  BLOB,
    first_offer   INTEGER,
    -- Latest event time (UTC ms): the row is deleted once the horizon passes it.
    last_ts       INTEGER NOT NULL,
    -- The engine's packed encoding of the contact's events and facts.
    body          BLOB    NOT NULL
);
INSERT INTO spilled_contacts_new ("partition", contact_key, customer_key, first_offer, last_ts, body)
    SELECT "partition", contact_key, customer_key, first_offer, last_ts, body FROM spilled_contacts;
DROP TABLE spilled_contacts;
ALTER TABLE spilled_contacts_new RENAME TO spilled_contacts;
CREATE UNIQUE INDEX spilled_contacts_key ON spilled_contacts ("partition", contact_key);
-- Named by the customer look-ups with INDEXED BY (see 0003).
CREATE INDEX spilled_contacts_customer ON spilled_contacts ("partition", customer_key);
CREATE INDEX spilled_contacts_last_ts ON spilled_contacts ("partition", last_ts);
