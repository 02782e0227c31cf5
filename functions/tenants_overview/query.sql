SELECT
    tenant_id,
    count() AS views,
    uniqExact(user_id) AS visitors,
    sum(revenue) AS revenue
FROM events
WHERE ts >= {from:DateTime('UTC')} AND ts < {to:DateTime('UTC')}
GROUP BY tenant_id
ORDER BY views DESC
