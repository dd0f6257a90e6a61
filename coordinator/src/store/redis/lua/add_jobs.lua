-- ARGV: prefix, pass_id, cursor ('' for none), then (dedup_bucket, dedup_field, where, version)
-- per job. A job whose identity is already in the pass's de-duplication index is skipped.
local pass_id, cursor = ARGV[2], ARGV[3]
local pass = pkey(pass_id)
local state = redis.call('HGET', pass, 'state')
if not state then return {'notfound'} end
if state ~= 'planning' then return {'precondition', 'pass ' .. pass_id .. ' is ' .. state .. ', not planning'} end
local created = 0
local seq = tonumber(redis.call('HGET', pass, 'seq'))
for i = 4, #ARGV, 4 do
  if redis.call('HSETNX', P .. ':d:' .. pass_id .. ':' .. ARGV[i], ARGV[i + 1], '') == 1 then
    seq = seq + 1
    created = created + 1
    redis.call('HSET', bucket(pass_id, seq), slot(seq), 'p0|' .. ARGV[i + 2], slot(seq) .. 'v', ARGV[i + 3])
  end
end
if created > 0 then
  redis.call('HSET', pass, 'seq', seq)
  redis.call('HINCRBY', pass, 'n:pending', created)
  redis.call('HINCRBY', pass, 'videos', created)
  redis.call('ZADD', P .. ':runnable', 'NX', redis.call('HGET', pass, 'order'), pass_id)
end
if cursor ~= '' then redis.call('HSET', pass, 'cursor', cursor) end
return {'ok', tostring(created)}
