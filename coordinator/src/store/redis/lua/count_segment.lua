-- ARGV: prefix, pass_id, video_key, segment_index, segment_count
-- One hash per pass, `P:pass:ID:seg`: field `VIDEO|INDEX` per segment counted, `VIDEO|n` how
-- many, `VIDEO|a` the segment designated to assemble (set once, when the count completes).
local pass_id, video, index, count = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if redis.call('EXISTS', pkey(pass_id)) == 0 then return {'notfound'} end
local key = pkey(pass_id) .. ':seg'
local new = redis.call('HSETNX', key, video .. '|' .. index, '1')
local assembler = redis.call('HGET', key, video .. '|a')
if new == 1 then
  local counted = redis.call('HINCRBY', key, video .. '|n', 1)
  if not assembler and counted >= count then
    redis.call('HSET', key, video .. '|a', index)
    assembler = index
  end
end
if assembler == index then return {'ok', '1'} end
return {'ok', '0'}
