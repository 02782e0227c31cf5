SELECT ts, user_id, session_id, path, referrer, country, device, duration_ms, revenue
FROM events
WHERE tenant_id = {caller_tenant:String}
  AND ts >= {from:DateTime64(3, 'UTC')}
  AND ts < {to:DateTime64(3, 'UTC')}
ORDER BY ts, session_id
LIMIT {limit:UInt32}
