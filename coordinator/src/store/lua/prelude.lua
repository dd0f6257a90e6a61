-- Shared helpers for every vidx job-store script. ARGV[1] is always the key prefix.
-- Keys are derived inside the scripts, so this targets a single Redis (or a primary with
-- replicas), not Redis Cluster.
local P = ARGV[1]
local function pkey(pass_id) return P .. ':pass:' .. pass_id end
local function jkey(job_id) return P .. ':job:' .. job_id end

-- Moves a job between states: per-state index, per-pass counts and the global queues stay in step.
local function move(job_id, pass_id, from, to, seq)
  local pass = pkey(pass_id)
  redis.call('ZREM', pass .. ':s:' .. from, job_id)
  redis.call('ZADD', pass .. ':s:' .. to, seq, job_id)
  redis.call('HINCRBY', pass, 'n:' .. from, -1)
  redis.call('HINCRBY', pass, 'n:' .. to, 1)
  redis.call('HSET', jkey(job_id), 'state', to)
  if from == 'pending' then redis.call('ZREM', P .. ':pending', job_id) end
  if from == 'failed' then redis.call('ZREM', P .. ':delayed', job_id) end
  if from == 'leased' then
    redis.call('ZREM', P .. ':leases', job_id)
    redis.call('HDEL', jkey(job_id), 'lease', 'deadline')
  end
  if to == 'pending' then
    redis.call('ZADD', P .. ':pending', redis.call('INCR', P .. ':gseq'), job_id)
  end
end

-- Counts a finished job in its pass's 10-second throughput bucket, dropping old buckets.
local function finished(pass_id, now)
  local rate = pkey(pass_id) .. ':rate'
  local bucket = math.floor(now / 10000)
  if redis.call('HINCRBY', rate, bucket, 1) == 1 then
    for _, old in ipairs(redis.call('HKEYS', rate)) do
      if tonumber(old) < bucket - 30 then redis.call('HDEL', rate, old) end
    end
  end
end

local function record_error(job_id, pass_id, url, reason, now)
  redis.call('HSET', jkey(job_id), 'err', reason)
  local errors = pkey(pass_id) .. ':errors'
  redis.call('LPUSH', errors, cjson.encode({job_id = job_id, video_url = url, reason = reason, at_ms = now}))
  redis.call('LTRIM', errors, 0, 19)
end

-- Creates a pending job unless one with this id exists; returns 1 when created.
local function create_job(pass_id, job_id, url, probe, spec)
  local job = jkey(job_id)
  if redis.call('EXISTS', job) == 1 then return 0 end
  local pass = pkey(pass_id)
  local seq = redis.call('HINCRBY', pass, 'seq', 1)
  redis.call('HSET', job, 'pass', pass_id, 'url', url, 'probe', probe, 'spec', spec,
    'state', 'pending', 'attempt', 0, 'seq', seq)
  redis.call('ZADD', pass .. ':jobs', seq, job_id)
  redis.call('ZADD', pass .. ':s:pending', seq, job_id)
  redis.call('HINCRBY', pass, 'n:pending', 1)
  redis.call('ZADD', P .. ':pending', redis.call('INCR', P .. ':gseq'), job_id)
  return 1
end

-- Checks a lease: returns the job's fields, or an error reply table.
local function check_lease(job_id, lease_id, ...)
  local fields = redis.call('HMGET', jkey(job_id), 'state', 'lease', ...)
  if not fields[1] then return nil, {'notfound'} end
  if fields[1] ~= 'leased' or fields[2] ~= lease_id then return nil, {'stale', fields[1]} end
  return fields, nil
end

-- A cancelled pass, or one whose planning failed, takes no more work.
local function stopped(state) return state == 'cancelled' or state == 'failed' end
