-- ARGV: prefix, pass_id, batch, mode ('cancel' to cancel, 'drain' to only sweep)
-- Cancels the pass, then moves up to `batch` pending or failed jobs to cancelled.
-- Returns how many such jobs remain, so the caller repeats until none do.
local pass_id, batch, mode = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local pass = pkey(pass_id)
local state = redis.call('HGET', pass, 'state')
if not state then return {'notfound'} end
if mode == 'cancel' then
  if state == 'planning' or state == 'running' then
    local open = tonumber(redis.call('HGET', pass, 'n:pending')) + tonumber(redis.call('HGET', pass, 'n:leased'))
      + tonumber(redis.call('HGET', pass, 'n:failed'))
    if state == 'running' and open == 0 then return {'ok', '0'} end
    redis.call('HSET', pass, 'state', 'cancelled')
    redis.call('DEL', pass .. ':planner')
    redis.call('SREM', P .. ':active', pass_id)
    state = 'cancelled'
  end
end
if state ~= 'cancelled' and state ~= 'failed' then return {'ok', '0'} end
for _, from in ipairs({'pending', 'failed'}) do
  local ids = redis.call('ZRANGE', pass .. ':s:' .. from, 0, batch - 1, 'WITHSCORES')
  for i = 1, #ids, 2 do move(ids[i], pass_id, from, 'cancelled', ids[i + 1]) end
end
local remaining = redis.call('ZCARD', pass .. ':s:pending') + redis.call('ZCARD', pass .. ':s:failed')
return {'ok', tostring(remaining)}
