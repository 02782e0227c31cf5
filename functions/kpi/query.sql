SELECT
    sum(views_in_session) AS views,
    uniqExact(user_id) AS visitors,
    count() AS sessions,
    sum(session_revenue) AS revenue,
    round(sum(session_duration_ms) / greatest(sum(views_in_session), 1)) AS avg_duration_ms,
    round(countIf(views_in_session = 1) / greatest(count(), 1), 4) AS bounce_rate
FROM
(
    SELECT
        session_id,
        any(user_id) AS user_id,
        count() AS views_in_session,
        sum(revenue) AS session_revenue,
        sum(duration_ms) AS session_duration_ms
    FROM events
    WHERE tenant_id = {caller_tenant:String}
      AND ts >= {from:DateTime('UTC')}
      AND ts < {to:DateTime('UTC')}
    GROUP BY session_id
)
