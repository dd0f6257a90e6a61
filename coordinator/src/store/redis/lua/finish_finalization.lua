-- ARGV: prefix, pass_id
-- Marks the pass finalized and lets its claim go.
local pass_id = ARGV[2]
local base = pkey(pass_id)
if redis.call('EXISTS', base) == 0 then return {'notfound'} end
redis.call('SET', base .. ':final', 'done')
redis.call('DEL', base .. ':claim')
return {'ok'}
