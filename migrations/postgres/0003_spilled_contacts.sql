-- Closed, settled contacts spilled out of the engine's memory (the PostgreSQL twin of
-- migrations/sqlite/0003_spilled_contacts.sql; see there).
CREATE TABLE spilled_contacts (
    "partition"   TEXT    NOT NULL,
    contact_key   BYTEA   NOT NULL,
    customer_key  BYTEA,
    first_offer   BIGINT,
    last_ts       BIGINT  NOT NULL,
    body          BYTEA   NOT NULL,
    PRIMARY KEY ("partition", contact_key)
);
CREATE INDEX spilled_contacts_customer ON spilled_contacts ("partition", customer_key)
    WHERE customer_key IS NOT NULL;
CREATE INDEX spilled_contacts_last_ts ON spilled_contacts ("partition", last_ts);
