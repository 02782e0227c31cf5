SELECT
    path,
    count() AS views,
    uniqExact(user_id) AS visitors,
    round(avg(duration_ms)) AS avg_duration_ms
FROM events
WHERE tenant_id = {caller_tenant:String}
  AND ts >= {from:DateTime('UTC')}
  AND ts < {to:DateTime('UTC')}
GROUP BY path
ORDER BY views DESC, path
LIMIT {limit:UInt16}
