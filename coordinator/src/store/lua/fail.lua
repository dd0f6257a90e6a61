-- ARGV: prefix, job_id, lease_id, reason, retryable ('1'/'0'), now_ms, base_backoff_ms, max_backoff_ms
local id, lease, reason, retryable = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, base, cap = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local job, err = check_lease(id, lease, 'pass', 'seq', 'attempt', 'url')
if err then return err end
local pass_id, seq, attempt = job[3], job[4], tonumber(job[5])
local pass = redis.call('HMGET', pkey(pass_id), 'state', 'max_attempts')
record_error(id, pass_id, job[6], reason, now)
if stopped(pass[1]) then
  move(id, pass_id, 'leased', 'cancelled', seq)
  finished(pass_id, now)
  return {'ok', 'cancelled', '0'}
end
if retryable == '1' and attempt < tonumber(pass[2]) then
  local backoff = math.min(base * 2 ^ math.min(attempt - 1, 30), cap)
  local retry_at = now + backoff
  move(id, pass_id, 'leased', 'failed', seq)
  redis.call('HSET', jkey(id), 'retry_at', retry_at)
  redis.call('ZADD', P .. ':delayed', retry_at, id)
  return {'ok', 'failed', string.format('%d', retry_at)}
end
move(id, pass_id, 'leased', 'dead', seq)
finished(pass_id, now)
return {'ok', 'dead', '0'}
