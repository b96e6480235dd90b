-- 15-minute queue rows: the comparable columns of `ccmetrics export --window 15m
-- --dimension queue` (docs/metrics.md). Needs load.sql. Waits in ms; service level
-- threshold 20 s and short abandon 5 s inclusive (the defaults).
WITH o AS (
    SELECT queue AS key, out_t // 900000 * 900000 AS w,
           count(*) AS offered,
           count(*) FILTER (outcome = 'contact.answered') AS answered,
           count(*) FILTER (outcome = 'contact.abandoned') AS abandoned,
           count(*) FILTER (outcome = 'contact.abandoned' AND out_t - offer_t <= 5000) AS short_abandoned,
           count(*) FILTER (outcome = 'contact.answered' AND out_t - offer_t <= 20000) AS answered_within,
           sum(out_t - offer_t) FILTER (outcome = 'contact.answered') AS wait_sum_ms
    FROM visits GROUP BY ALL
), h AS (
    -- A segment counts under the contact's queue at its start (the latest offer).
    SELECT coalesce(o.queue, 'unknown') AS key, count_t // 900000 * 900000 AS w,
           count(*) AS handled, sum(handle_ms) AS handle_sum_ms
    FROM segments s
    ASOF LEFT JOIN offers o ON o.contact_id = s.contact_id AND s.start_k > o.k
    GROUP BY ALL
)
SELECT strftime(make_timestamp(w * 1000), '%Y-%m-%dT%H:%M:%SZ') AS window_start, key,
       coalesce(offered, 0) AS offered, coalesce(answered, 0) AS answered,
       coalesce(abandoned, 0) AS abandoned, coalesce(short_abandoned, 0) AS short_abandoned,
       coalesce(answered_within, 0) AS answered_within, coalesce(wait_sum_ms, 0) AS wait_sum_ms,
       coalesce(handled, 0) AS handled, coalesce(handle_sum_ms, 0) AS handle_sum_ms
FROM o FULL JOIN h USING (key, w)
ORDER BY w, key
