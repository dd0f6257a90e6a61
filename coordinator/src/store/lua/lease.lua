-- ARGV: prefix, now_ms, max_jobs, lease_ms
-- Returns due retries to pending, then leases up to max_jobs oldest pending jobs.
-- Reply: 'ok' then 7 strings per job: id, pass, spec, attempt, lease, deadline, last error.
local now, max, dur = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':delayed', '-inf', now, 'LIMIT', 0, 256)) do
  local job = redis.call('HMGET', jkey(id), 'pass', 'seq')
  move(id, job[1], 'failed', 'pending', job[2])
end
local out = {'ok'}
local leased = 0
while leased < max do
  local head = redis.call('ZRANGE', P .. ':pending', 0, max - leased - 1)
  if #head == 0 then break end
  for _, id in ipairs(head) do
    local job = redis.call('HMGET', jkey(id), 'pass', 'seq', 'spec', 'err')
    if stopped(redis.call('HGET', pkey(job[1]), 'state')) then
      move(id, job[1], 'pending', 'cancelled', job[2])
    else
      move(id, job[1], 'pending', 'leased', job[2])
      local lease = redis.call('INCR', P .. ':lease_seq')
      local attempt = redis.call('HINCRBY', jkey(id), 'attempt', 1)
      local deadline = now + dur
      redis.call('HSET', jkey(id), 'lease', lease, 'deadline', deadline, 'started', now, 'dur', dur)
      redis.call('ZADD', P .. ':leases', deadline, id)
      out[#out + 1] = id
      out[#out + 1] = job[1]
      out[#out + 1] = job[3]
      out[#out + 1] = tostring(attempt)
      out[#out + 1] = tostring(lease)
      out[#out + 1] = string.format('%d', deadline)
      out[#out + 1] = job[4] or ''
      leased = leased + 1
    end
  end
end
return out
