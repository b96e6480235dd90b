-- Load a ccmetrics JSONL file once into the table `ev` (run.py replaces $INPUT).
-- What this reproduces of docs/events.md and docs/metrics.md:
--   * duplicates: one row per (contact_id, event_id), as the engine compares ids within
--     the contact (duplicates are identical lines, so which copy is kept does not matter);
--   * ts: RFC 3339 text or integer epoch milliseconds, both to epoch ms `t`;
--   * ordering: a sort key `k` = (ts, type order of docs/events.md); the engine's last
--     tie-break (a hash of event_id) is not reproduced.
-- Not reproduced: validation and rejections (the input is assumed valid), the
-- correction horizon (`too_late`) and revisions: this is a batch over the whole file,
-- i.e. the final, fully corrected figures. agent.state events are not needed and
-- dropped. `k` is t * 32 + 2 * type order, leaving odd values free for derived starts.
CREATE OR REPLACE TABLE ev AS
SELECT DISTINCT ON (contact_id, event_id)
    contact_id,
    event_id,
    type,
    queue,
    agent_id,
    to_agent_id,
    t,
    t * 32 + 2 * CASE type
        WHEN 'contact.offered' THEN 0
        WHEN 'contact.routed' THEN 1
        WHEN 'contact.answered' THEN 2
        WHEN 'contact.abandoned' THEN 3
        WHEN 'contact.first_response' THEN 4
        WHEN 'contact.transferred' THEN 5
        WHEN 'contact.ended' THEN 6
        WHEN 'contact.wrapped' THEN 7
        ELSE 8 END AS k,
    talk_ms,
    hold_ms,
    wrap_ms
FROM (
    SELECT *,
        CASE WHEN regexp_full_match(ts, '[0-9]+') THEN ts::BIGINT
             ELSE epoch_ms(ts::TIMESTAMPTZ) END AS t
    FROM read_json('$INPUT',
        format = 'newline_delimited', ignore_errors = true,
        columns = {
            event_id: 'VARCHAR', type: 'VARCHAR', ts: 'VARCHAR', contact_id: 'VARCHAR',
            queue: 'VARCHAR', agent_id: 'VARCHAR', to_agent_id: 'VARCHAR',
            talk_ms: 'DOUBLE', hold_ms: 'DOUBLE', wrap_ms: 'DOUBLE'
        })
    WHERE type IN ('contact.offered', 'contact.routed', 'contact.answered',
                   'contact.abandoned', 'contact.transferred', 'contact.ended',
                   'contact.wrapped')
);

-- Queue visits (docs/metrics.md "Queue outcome"): each offer's outcome is the first
-- answered / abandoned after it and before the contact's next offer; counted at the
-- outcome's time.
CREATE OR REPLACE TEMP TABLE offers AS
SELECT contact_id, queue, t, k,
       lead(k) OVER (PARTITION BY contact_id ORDER BY k) AS next_k
FROM ev WHERE type = 'contact.offered';

CREATE OR REPLACE TEMP TABLE visits AS
SELECT o.contact_id, o.queue, o.t AS offer_t, o.k AS offer_k,
       x.type AS outcome, x.t AS out_t, x.k AS out_k, x.agent_id AS out_agent
FROM offers o
ASOF JOIN (SELECT contact_id, type, t, k, agent_id FROM ev
           WHERE type IN ('contact.answered', 'contact.abandoned')) x
  ON x.contact_id = o.contact_id AND x.k > o.k
WHERE o.next_k IS NULL OR x.k < o.next_k;

-- Handling segments (docs/metrics.md "Handle time"): a segment starts at an answer or,
-- for the receiving agent, at a transfer with to_agent_id (odd key: just after the
-- transfer that closes the transferring agent's segment). It is closed by the first
-- transfer or end after its start and before the contact's next segment start.
CREATE OR REPLACE TEMP TABLE starts AS
SELECT contact_id, agent, t, k, lead(k) OVER (PARTITION BY contact_id ORDER BY k) AS next_k
FROM (
    SELECT contact_id, agent_id AS agent, t, k FROM ev WHERE type = 'contact.answered'
    UNION ALL
    SELECT contact_id, to_agent_id, t, k + 1 FROM ev
    WHERE type = 'contact.transferred' AND to_agent_id IS NOT NULL
);

CREATE OR REPLACE TEMP TABLE segments AS
WITH closed AS (
    SELECT s.contact_id, s.agent, s.t AS start_t, s.k AS start_k,
           c.type AS closer, c.t AS close_t, c.k AS close_k, c.talk_ms, c.hold_ms
    FROM starts s
    ASOF JOIN (SELECT contact_id, type, t, k, talk_ms, hold_ms FROM ev
               WHERE type IN ('contact.transferred', 'contact.ended')) c
      ON c.contact_id = s.contact_id AND c.k > s.k
    WHERE s.next_k IS NULL OR c.k < s.next_k
), wrapped AS (
    -- The first wrap after the end; it counts only within wrap_timeout (10 min).
    SELECT d.*, w.t AS wrap_t, w.wrap_ms
    FROM closed d
    ASOF LEFT JOIN (SELECT contact_id, t, k, wrap_ms FROM ev WHERE type = 'contact.wrapped') w
      ON w.contact_id = d.contact_id AND w.k > d.close_k
)
SELECT contact_id, agent, start_k,
    CASE WHEN closer = 'contact.ended' AND wrap_t <= close_t + 600000 THEN wrap_t
         ELSE close_t END AS count_t,
    CASE WHEN closer = 'contact.transferred' THEN close_t - start_t
         ELSE coalesce(round(talk_ms), (close_t - start_t) - coalesce(round(hold_ms), 0))
              + coalesce(round(hold_ms), 0)
              + CASE WHEN wrap_t <= close_t + 600000
                     THEN coalesce(round(wrap_ms), wrap_t - close_t) ELSE 0 END
    END::BIGINT AS handle_ms
FROM wrapped;
