-- ARGV: prefix, pass_id, holder, ttl_ms
local pass_id, holder, ttl = ARGV[2], ARGV[3], ARGV[4]
local state = redis.call('HGET', pkey(pass_id), 'state')
if not state then return {'notfound'} end
if state ~= 'planning' then return {'ok', '0'} end
local lock = pkey(pass_id) .. ':planner'
local owner = redis.call('GET', lock)
if owner and owner ~= holder then return {'ok', '0'} end
redis.call('SET', lock, holder, 'PX', ttl)
return {'ok', '1'}
