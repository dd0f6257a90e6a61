-- ARGV: prefix, pass_id, error ('' when planning succeeded)
-- Replies 'ok' and '1' when planning ended now, so the caller drops the de-duplication index.
local pass_id, err = ARGV[2], ARGV[3]
local state = redis.call('HGET', pkey(pass_id), 'state')
if not state then return {'notfound'} end
if state ~= 'planning' then return {'ok', '0'} end
redis.call('DEL', pkey(pass_id) .. ':planner')
if err ~= '' then
  redis.call('HSET', pkey(pass_id), 'state', 'failed', 'error', err)
  stop_queued(pass_id)
else
  redis.call('HSET', pkey(pass_id), 'state', 'running')
end
return {'ok', '1'}
