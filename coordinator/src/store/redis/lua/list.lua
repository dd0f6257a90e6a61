-- ARGV: prefix, pass_id, state filter ('' for all), after (job number), page size, scan budget
-- A page of a pass's jobs in creation order. Jobs in a rare state come from that state's index;
-- any other listing reads records in order, at most `scan budget` of them per call, so a page
-- may come back short, with a position to continue from. O(page + budget) whatever the pass size.
-- Reply: 'ok', the position to continue after ('0' at the end), then per job: number, state,
-- attempt, where, version, result, last error.
local pass_id, filter, after = ARGV[2], ARGV[3], tonumber(ARGV[4])
local page, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local pass = pkey(pass_id)
local fields = redis.call('HMGET', pass, 'state', 'seq')
if not fields[1] then return {'notfound'} end
local halted, seq = stopped(fields[1]), tonumber(fields[2])
local err_key = pass .. ':err'
local out = {'ok', '0'}
local function emit(n, job, state)
  local b = bucket(pass_id, n)
  local extra = redis.call('HMGET', b, slot(n) .. 'v', slot(n) .. 'r')
  out[#out + 1] = tostring(n)
  out[#out + 1] = state
  out[#out + 1] = tostring(job.attempt)
  out[#out + 1] = job.rest
  out[#out + 1] = extra[1] or ''
  out[#out + 1] = extra[2] or ''
  out[#out + 1] = redis.call('HGET', err_key, n) or ''
end
local function effective(job)
  if halted and (job.state == 'pending' or job.state == 'failed') then return 'cancelled' end
  return job.state
end

if INDEXED[filter] then
  local members = redis.call('ZRANGEBYSCORE', pass .. ':s:' .. filter, '(' .. after, '+inf', 'LIMIT', 0, page + 1)
  for i = 1, math.min(#members, page) do
    local n = tonumber(members[i])
    local job = read_job(pass_id, n)
    if job then emit(n, job, effective(job)) end
  end
  if #members > page then out[2] = members[page] end
  return out
end

local found, n = 0, after
local last = math.min(seq, after + budget)
while n < last and found < page do
  n = n + 1
  local job = read_job(pass_id, n)
  if job then
    local state = effective(job)
    if filter == '' or state == filter then
      emit(n, job, state)
      found = found + 1
    end
  end
end
if n < seq then out[2] = tostring(n) end
return out
