-- Daily agent rows (UTC days): the comparable columns of `ccmetrics export --window 1d
-- --dimension agent` (docs/metrics.md "Agent and team rows"). Needs load.sql.
WITH ev_visit AS (
    -- Each routed / answered event with the queue visit (latest offer) it belongs to;
    -- events before any offer of their contact (the offer is missing, e.g. cut off at
    -- the end of a file) form one visit of their own (offer_k NULL), as in the engine.
    SELECT e.contact_id, e.type, e.agent_id, e.t, e.k, o.k AS offer_k
    FROM (SELECT * FROM ev WHERE type IN ('contact.routed', 'contact.answered')) e
    ASOF LEFT JOIN offers o ON o.contact_id = e.contact_id AND e.k > o.k
), presented AS (
    -- Every routing counts once at its time; an answer by an agent not routed earlier
    -- in the same visit counts as one presentation at the answer time.
    SELECT agent_id AS key, t FROM ev_visit WHERE type = 'contact.routed'
    UNION ALL
    SELECT a.agent_id, min(a.t) FROM ev_visit a
    WHERE a.type = 'contact.answered' AND NOT EXISTS (
        SELECT 1 FROM ev_visit r
        WHERE r.type = 'contact.routed' AND r.contact_id = a.contact_id
          AND r.offer_k IS NOT DISTINCT FROM a.offer_k AND r.agent_id = a.agent_id AND r.k < a.k)
    GROUP BY a.contact_id, a.offer_k, a.agent_id
), answers AS (
    -- An agent answering the same visit twice counts once, at the first answer.
    SELECT agent_id AS key, min(t) AS t FROM ev_visit WHERE type = 'contact.answered'
    GROUP BY contact_id, offer_k, agent_id
), abandons AS (
    -- An abandoned visit counts for the last agent it was routed to, at the abandon.
    SELECT r.agent_id AS key, v.out_t AS t
    FROM visits v
    ASOF JOIN (SELECT contact_id, agent_id, k FROM ev WHERE type = 'contact.routed') r
      ON r.contact_id = v.contact_id AND v.out_k > r.k
    WHERE v.outcome = 'contact.abandoned' AND r.k > v.offer_k
), counts AS (
    SELECT key, t // 86400000 * 86400000 AS w, 1 AS offered, 0 AS answered, 0 AS abandoned,
           0 AS handled, 0 AS handle_sum_ms FROM presented
    UNION ALL SELECT key, t // 86400000 * 86400000, 0, 1, 0, 0, 0 FROM answers
    UNION ALL SELECT key, t // 86400000 * 86400000, 0, 0, 1, 0, 0 FROM abandons
    UNION ALL SELECT agent, count_t // 86400000 * 86400000, 0, 0, 0, 1, handle_ms FROM segments
)
SELECT strftime(make_timestamp(w * 1000), '%Y-%m-%dT%H:%M:%SZ') AS window_start, key,
       sum(offered)::BIGINT AS offered, sum(answered)::BIGINT AS answered,
       sum(abandoned)::BIGINT AS abandoned, sum(handled)::BIGINT AS handled,
       sum(handle_sum_ms)::BIGINT AS handle_sum_ms
FROM counts GROUP BY w, key ORDER BY w, key
