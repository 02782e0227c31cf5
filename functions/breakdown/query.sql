SELECT
    if({dimension:String} = 'device', device, country) AS value,
    count() AS views,
    uniqExact(user_id) AS visitors,
    sum(revenue) AS revenue
FROM events
WHERE tenant_id = {caller_tenant:String}
  AND ts >= {from:DateTime('UTC')}
  AND ts < {to:DateTime('UTC')}
  AND (empty({countries:Array(String)}) OR has({countries:Array(String)}, country))
GROUP BY value
ORDER BY views DESC, value
