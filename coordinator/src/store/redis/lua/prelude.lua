-- Shared helpers for every vidx job-store script. ARGV[1] is always the key prefix.
-- Keys are derived inside the scripts, so this targets a single Redis (or a primary with
-- replicas), not Redis Cluster. The record layout is described in `codec.rs`: scripts read and
-- write only a record's `{state}{attempt}{counts}|` head and never look at the `where` part
-- after the `|`. A job's `rest` is `{counts}|{where}`: passing it back to `write_job` keeps the
-- counts (`c` crashes, `k` panics, absent when zero) with the record.
local P = ARGV[1]
local PER_BUCKET = 64
local function pkey(pass_id) return P .. ':pass:' .. pass_id end

-- One-letter state codes in job records, and back (codec.rs `state_code`).
local CODE = {pending = 'p', leased = 'l', done = 'd', failed = 'f', dead = 'x', cancelled = 'c'}
local NAME = {p = 'pending', l = 'leased', d = 'done', f = 'failed', x = 'dead', c = 'cancelled'}
-- States rare enough to keep a per-pass index of (score and member: the job number).
local INDEXED = {leased = true, failed = true, dead = true}

local function parse_id(job_id)
  local pass_id, n = string.match(job_id, '^(.+)%.([1-9]%d*)$')
  if not pass_id then return nil, nil end
  return pass_id, tonumber(n)
end

local function bucket(pass_id, n) return P .. ':j:' .. pass_id .. ':' .. math.floor(n / PER_BUCKET) end
local function slot(n) return tostring(n % PER_BUCKET) end

-- A job's record head: state name, attempt, and the rest of the record (kept as it is).
-- A job's record head: state name, attempt, crash and panic counts, and the rest of the record
-- (`{counts}|{where}`, kept as it is).
local function read_job(pass_id, n)
  local record = redis.call('HGET', bucket(pass_id, n), slot(n))
  if not record then return nil end
  local code, attempt, rest = string.match(record, '^(%a)(%d+)(.*)$')
  local counts = string.match(rest, '^([^|]*)|') or ''
  return {
    state = NAME[code], attempt = tonumber(attempt), rest = rest,
    crashes = tonumber(string.match(counts, 'c(%d+)') or '0'),
    panics = tonumber(string.match(counts, 'k(%d+)') or '0'),
  }
end

local function write_job(pass_id, n, state, attempt, rest)
  redis.call('HSET', bucket(pass_id, n), slot(n), CODE[state] .. string.format('%d', attempt) .. rest)
end

-- A job's rest with its counts replaced; a count of zero takes no bytes.
local function with_counts(rest, crashes, panics)
  local tail = string.match(rest, '^[^|]*(|.*)$')
  local counts = ''
  if crashes > 0 then counts = counts .. string.format('c%d', crashes) end
  if panics > 0 then counts = counts .. string.format('k%d', panics) end
  return counts .. tail
end

-- Moves a job's counts and rare-state indexes between states (the record is written apart).
local function count(pass_id, n, from, to)
  local pass = pkey(pass_id)
  redis.call('HINCRBY', pass, 'n:' .. from, -1)
  redis.call('HINCRBY', pass, 'n:' .. to, 1)
  if INDEXED[from] then redis.call('ZREM', pass .. ':s:' .. from, n) end
  if INDEXED[to] then redis.call('ZADD', pass .. ':s:' .. to, n, n) end
end

-- Sends a job back to the queue: it is leased before never-leased jobs, oldest first.
local function requeue(job_id)
  redis.call('ZADD', P .. ':requeue', redis.call('INCR', P .. ':gseq'), job_id)
end

-- Counts a finished job in its pass's 10-second throughput bucket, dropping old buckets.
local function finished(pass_id, now)
  local rate = pkey(pass_id) .. ':rate'
  local b = math.floor(now / 10000)
  if redis.call('HINCRBY', rate, b, 1) == 1 then
    for _, old in ipairs(redis.call('HKEYS', rate)) do
      if tonumber(old) < b - 30 then redis.call('HDEL', rate, old) end
    end
  end
end

-- Keeps the job's last error, and the pass's 20 most recent (the URL is filled in when read).
local function record_error(job_id, pass_id, n, reason, now)
  redis.call('HSET', pkey(pass_id) .. ':err', n, reason)
  local errors = pkey(pass_id) .. ':errors'
  redis.call('LPUSH', errors, cjson.encode({job_id = job_id, reason = reason, at_ms = now}))
  redis.call('LTRIM', errors, 0, 19)
end

-- The lease a leased job is held under: {lease_id, deadline, started, duration, worker}, or nil.
-- Stored as one string, the worker's id last (it may hold spaces).
local function read_lease(job_id)
  local raw = redis.call('HGET', P .. ':lease', job_id)
  if not raw then return nil end
  local lease, deadline, started, dur, worker = string.match(raw, '^(%d+) (%-?%d+) (%-?%d+) (%d+) (.*)$')
  return {lease = lease, deadline = tonumber(deadline), started = tonumber(started), dur = tonumber(dur), worker = worker}
end

local function write_lease(job_id, lease)
  redis.call('HSET', P .. ':lease', job_id, string.format('%s %d %d %d %s', lease.lease, lease.deadline, lease.started, lease.dur, lease.worker))
  redis.call('ZADD', P .. ':leases', lease.deadline, job_id)
end

local function drop_lease(job_id)
  redis.call('HDEL', P .. ':lease', job_id)
  redis.call('ZREM', P .. ':leases', job_id)
end

-- Checks a lease: returns the job's pass, number, record head and lease, or an error reply.
local function check_lease(job_id, lease_id)
  local pass_id, n = parse_id(job_id)
  if not pass_id then return nil, {'notfound'} end
  local job = read_job(pass_id, n)
  if not job then return nil, {'notfound'} end
  if job.state ~= 'leased' then return nil, {'stale', job.state} end
  local lease = read_lease(job_id)
  if not lease or lease.lease ~= lease_id then return nil, {'stale', 'leased'} end
  return {pass_id = pass_id, n = n, job = job, lease = lease}, nil
end

-- A cancelled pass, or one whose planning failed, takes no more work.
local function stopped(state) return state == 'cancelled' or state == 'failed' end

-- Stops a pass's queued work in O(1): every pending and failed job counts as cancelled at once.
-- Their records keep their letter; readers see a pending or failed job of a stopped pass as
-- cancelled, and the queues drop its entries when they next reach them.
local function stop_queued(pass_id)
  local pass = pkey(pass_id)
  local counts = redis.call('HMGET', pass, 'n:pending', 'n:failed')
  local moved = tonumber(counts[1]) + tonumber(counts[2])
  redis.call('HSET', pass, 'n:pending', 0, 'n:failed', 0)
  redis.call('HINCRBY', pass, 'n:cancelled', moved)
  redis.call('DEL', pass .. ':s:failed', pass .. ':planner')
  redis.call('ZREM', P .. ':runnable', pass_id)
  redis.call('SREM', P .. ':active', pass_id)
end
