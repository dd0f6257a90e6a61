-- ARGV: prefix, job_id, lease_id, reason, kind ('retryable', 'permanent' or 'panic'), now_ms,
-- base_backoff_ms, max_backoff_ms
-- The one place a failure is classified: a retryable failure is retried with backoff while
-- attempts last, a permanent one is dead, a panic is retried the first time and dead the second.
local id, lease_id, reason, kind = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, base, cap = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if kind ~= 'retryable' and kind ~= 'permanent' and kind ~= 'panic' then
  return {'invalid', 'failure kind ' .. kind .. ' is not a known kind'}
end
local held, err = check_lease(id, lease_id)
if err then return err end
local pass_id, n, job = held.pass_id, held.n, held.job
local rest = job.rest
local retry = kind == 'retryable'
if kind == 'panic' then
  retry = job.panics == 0
  rest = with_counts(job.rest, job.crashes, job.panics + 1)
end
local pass = redis.call('HMGET', pkey(pass_id), 'state', 'max_attempts')
record_error(id, pass_id, n, reason, now)
drop_lease(id)
if stopped(pass[1]) then
  write_job(pass_id, n, 'cancelled', job.attempt, rest)
  count(pass_id, n, 'leased', 'cancelled')
  finished(pass_id, now)
  return {'ok', 'cancelled', '0'}
end
if retry and job.attempt < tonumber(pass[2]) then
  local backoff = math.min(base * 2 ^ math.min(job.attempt - 1, 30), cap)
  local retry_at = now + backoff
  write_job(pass_id, n, 'failed', job.attempt, rest)
  count(pass_id, n, 'leased', 'failed')
  redis.call('ZADD', P .. ':delayed', retry_at, id)
  return {'ok', 'failed', string.format('%d', retry_at)}
end
write_job(pass_id, n, 'dead', job.attempt, rest)
count(pass_id, n, 'leased', 'dead')
finished(pass_id, now)
return {'ok', 'dead', '0'}
