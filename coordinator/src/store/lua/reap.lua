-- ARGV: prefix, now_ms, limit
-- Returns jobs whose lease deadline passed to pending, or to dead when out of attempts.
-- Atomic, so several coordinator replicas may run it at once: each job is reaped once.
local now, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  local job = redis.call('HMGET', jkey(id), 'state', 'pass', 'seq', 'attempt', 'url')
  if job[1] ~= 'leased' then
    redis.call('ZREM', P .. ':leases', id)
  else
    local pass = redis.call('HMGET', pkey(job[2]), 'state', 'max_attempts')
    record_error(id, job[2], job[5], 'lease expired', now)
    local to = 'pending'
    if stopped(pass[1]) then
      to = 'cancelled'
    elseif tonumber(job[4]) >= tonumber(pass[2]) then
      to = 'dead'
    end
    move(id, job[2], 'leased', to, job[3])
    if to ~= 'pending' then finished(job[2], now) end
  end
end
return {'ok', tostring(#ids)}
