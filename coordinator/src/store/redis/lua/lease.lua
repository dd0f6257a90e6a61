-- ARGV: prefix, now_ms, max_jobs, lease_ms, worker_id
-- Returns due retries to the queue, then leases up to max_jobs jobs: requeued ones first (oldest
-- first), then never-leased ones from the oldest pass with any. Every step is O(1) or O(log N).
-- Reply: 'ok' then 8 strings per job: id, pass, where, version, attempt, lease, deadline, last error.
local now, max, dur, worker = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local pass_states = {}
local function pass_state(pass_id)
  if pass_states[pass_id] == nil then
    pass_states[pass_id] = redis.call('HGET', pkey(pass_id), 'state') or false
  end
  return pass_states[pass_id]
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':delayed', '-inf', now, 'LIMIT', 0, 256)) do
  redis.call('ZREM', P .. ':delayed', id)
  local pass_id, n = parse_id(id)
  local job = pass_id and read_job(pass_id, n)
  -- A stopped pass already counted its failed jobs as cancelled.
  if job and job.state == 'failed' and not stopped(pass_state(pass_id)) then
    write_job(pass_id, n, 'pending', job.attempt, job.rest)
    count(pass_id, n, 'failed', 'pending')
    requeue(id)
  end
end

local out = {'ok'}
local leased = 0
local lease_seq = P .. ':lease_seq'
local function lease_one(pass_id, n, id, job)
  local lease = {lease = tostring(redis.call('INCR', lease_seq)), deadline = now + dur, started = now, dur = dur, worker = worker}
  local attempt = job.attempt + 1
  write_job(pass_id, n, 'leased', attempt, job.rest)
  count(pass_id, n, 'pending', 'leased')
  write_lease(id, lease)
  local b = bucket(pass_id, n)
  out[#out + 1] = id
  out[#out + 1] = pass_id
  out[#out + 1] = job.rest
  out[#out + 1] = redis.call('HGET', b, slot(n) .. 'v') or ''
  out[#out + 1] = tostring(attempt)
  out[#out + 1] = lease.lease
  out[#out + 1] = string.format('%d', lease.deadline)
  out[#out + 1] = redis.call('HGET', pkey(pass_id) .. ':err', n) or ''
  leased = leased + 1
end

-- Entries of stopped passes are dropped as they are met, at most 1024 per call.
local examined = 0
while leased < max and examined < 1024 do
  local head = redis.call('ZRANGE', P .. ':requeue', 0, max - leased - 1)
  if #head == 0 then break end
  examined = examined + #head
  for _, id in ipairs(head) do
    redis.call('ZREM', P .. ':requeue', id)
    local pass_id, n = parse_id(id)
    local job = pass_id and read_job(pass_id, n)
    -- A stopped pass already counted its pending jobs as cancelled.
    if job and job.state == 'pending' and not stopped(pass_state(pass_id)) then
      lease_one(pass_id, n, id, job)
    end
  end
end

while leased < max do
  local top = redis.call('ZRANGE', P .. ':runnable', 0, 0)
  if #top == 0 then break end
  local pass_id = top[1]
  local pass = pkey(pass_id)
  local fields = redis.call('HMGET', pass, 'state', 'next', 'seq')
  if not fields[1] or stopped(fields[1]) then
    redis.call('ZREM', P .. ':runnable', pass_id)
  else
    local first, seq = tonumber(fields[2]), tonumber(fields[3])
    local last = math.min(seq, first + max - leased - 1)
    for n = first, last do
      local job = read_job(pass_id, n)
      if job and job.state == 'pending' then lease_one(pass_id, n, pass_id .. '.' .. n, job) end
    end
    redis.call('HSET', pass, 'next', last + 1)
    if last >= seq then redis.call('ZREM', P .. ':runnable', pass_id) end
  end
end
return out
