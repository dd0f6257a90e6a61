-- ARGV: prefix, pass_id, holder, ttl_ms, again ('1': claim a finalized pass again)
-- `P:pass:ID:final` is `done` once the pass was finalized; `P:pass:ID:claim` holds the current
-- claim's holder with a TTL, renewed by its holder while it writes. A re-run's claim leaves
-- `done` in place, so a re-run that fails leaves the pass finalized as it was.
local pass_id, holder, ttl, again = ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
local base = pkey(pass_id)
if redis.call('EXISTS', base) == 0 then return {'notfound'} end
if redis.call('GET', base .. ':final') == 'done' and not again then return {'ok', 'done'} end
local owner = redis.call('GET', base .. ':claim')
if owner and owner ~= holder then return {'ok', 'busy'} end
redis.call('SET', base .. ':claim', holder, 'PX', ttl)
return {'ok', 'claimed'}
