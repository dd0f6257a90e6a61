-- ARGV: prefix, now_ms, limit
-- Returns jobs whose lease deadline passed to the queue, or to dead when out of attempts.
-- Atomic, so several coordinator replicas may run it at once: each job is reaped once.
local now, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  local pass_id, n = parse_id(id)
  local job = pass_id and read_job(pass_id, n)
  drop_lease(id)
  if job and job.state == 'leased' then
    local pass = redis.call('HMGET', pkey(pass_id), 'state', 'max_attempts')
    record_error(id, pass_id, n, 'lease expired', now)
    local to = 'pending'
    if stopped(pass[1]) then
      to = 'cancelled'
    elseif job.attempt >= tonumber(pass[2]) then
      to = 'dead'
    end
    write_job(pass_id, n, to, job.attempt, job.rest)
    count(pass_id, n, 'leased', to)
    if to == 'pending' then requeue(id) else finished(pass_id, now) end
  end
end
return {'ok', tostring(#ids)}
