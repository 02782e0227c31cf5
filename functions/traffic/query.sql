SELECT
    multiIf(
        {granularity:String} = 'hour', toStartOfHour(toDateTime(ts, 'UTC')),
        {granularity:String} = 'week', toDateTime(toMonday(ts), 'UTC'),
        toDateTime(toDate(ts), 'UTC')
    ) AS bucket,
    count() AS views,
    uniqExact(session_id) AS sessions,
    sum(revenue) AS revenue
FROM events
WHERE tenant_id = {caller_tenant:String}
  AND ts >= {from:DateTime('UTC')}
  AND ts < {to:DateTime('UTC')}
GROUP BY bucket
ORDER BY bucket
