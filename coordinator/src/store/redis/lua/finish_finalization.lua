-- ARGV: prefix, pass_id
local pass_id = ARGV[2]
if redis.call('EXISTS', pkey(pass_id)) == 0 then return {'notfound'} end
redis.call('SET', pkey(pass_id) .. ':final', 'done')
return {'ok'}
