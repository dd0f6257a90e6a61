-- ARGV: prefix, pass_id, holder, ttl_ms, again ('1': claim a finalized pass again)
-- `P:pass:ID:final` holds `done` once the pass was finalized, else the claim's holder with a TTL.
local pass_id, holder, ttl, again = ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
if redis.call('EXISTS', pkey(pass_id)) == 0 then return {'notfound'} end
local key = pkey(pass_id) .. ':final'
local owner = redis.call('GET', key)
if owner == 'done' and not again then return {'ok', 'done'} end
if owner and owner ~= 'done' and owner ~= holder then return {'ok', 'busy'} end
redis.call('SET', key, holder, 'PX', ttl)
return {'ok', 'claimed'}
