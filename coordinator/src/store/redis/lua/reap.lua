-- ARGV: prefix, now_ms, limit, max_crashes
-- Returns jobs whose lease deadline passed to the queue. Each such job counts a crash (its worker
-- stopped answering); it is dead at max_crashes, with the reason `worker crashed N times on this
-- video` (`crash_reason` in `store/mod.rs`), or when out of attempts.
-- Atomic, so several coordinator replicas may run it at once: each job is reaped once.
local now, limit, max_crashes = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ids = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  local pass_id, n = parse_id(id)
  local job = pass_id and read_job(pass_id, n)
  drop_lease(id)
  if job and job.state == 'leased' then
    local pass = redis.call('HMGET', pkey(pass_id), 'state', 'max_attempts')
    local crashes = job.crashes + 1
    local rest = with_counts(job.rest, crashes, job.panics)
    local reason = 'lease expired'
    local to = 'pending'
    if stopped(pass[1]) then
      to = 'cancelled'
    elseif crashes >= max_crashes then
      to = 'dead'
      reason = string.format('worker crashed %d times on this video', crashes)
    elseif job.attempt >= tonumber(pass[2]) then
      to = 'dead'
    end
    record_error(id, pass_id, n, reason, now)
    write_job(pass_id, n, to, job.attempt, rest)
    count(pass_id, n, 'leased', to)
    if to == 'pending' then requeue(id) else finished(pass_id, now) end
  end
end
return {'ok', tostring(#ids)}
