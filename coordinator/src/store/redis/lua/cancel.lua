-- ARGV: prefix, pass_id
-- Cancels a planning or running pass with work left, in O(1) (see `stop_queued`). Leased jobs
-- become cancelled when their worker next reports. Replies 'ok' and '1' when it cancelled now.
local pass_id = ARGV[2]
local pass = pkey(pass_id)
local state = redis.call('HGET', pass, 'state')
if not state then return {'notfound'} end
if state ~= 'planning' and state ~= 'running' then return {'ok', '0'} end
local counts = redis.call('HMGET', pass, 'n:pending', 'n:leased', 'n:failed')
local open = tonumber(counts[1]) + tonumber(counts[2]) + tonumber(counts[3])
if state == 'running' and open == 0 then return {'ok', '0'} end
redis.call('HSET', pass, 'state', 'cancelled')
stop_queued(pass_id)
return {'ok', '1'}
