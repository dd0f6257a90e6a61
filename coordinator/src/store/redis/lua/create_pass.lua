-- ARGV: prefix, pass_id, spec_json, now_ms, idempotency_key ('' for none), max_attempts
local pass_id, spec, now, key, max_attempts = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if key ~= '' then
  local existing = redis.call('GET', P .. ':idem:' .. key)
  if existing then return {'existing', existing} end
  redis.call('SET', P .. ':idem:' .. key, pass_id)
end
-- `seq` is the last job number given out, `next` the first never leased: jobs next..seq are the
-- pass's untouched queue. `order` ranks the pass among passes with queued work (oldest first).
redis.call('HSET', pkey(pass_id), 'spec', spec, 'state', 'planning', 'created', now, 'videos', 0,
  'max_attempts', max_attempts, 'seq', 0, 'next', 1, 'order', redis.call('INCR', P .. ':pass_seq'),
  'n:pending', 0, 'n:leased', 0, 'n:done', 0, 'n:failed', 0, 'n:dead', 0, 'n:cancelled', 0)
if key ~= '' then redis.call('HSET', pkey(pass_id), 'idem', key) end
redis.call('ZADD', P .. ':passes', 0, pass_id)
redis.call('SADD', P .. ':active', pass_id)
return {'created', pass_id}
