-- ARGV: prefix, pass_id, cursor ('' for none), then (job_id, url, probe, spec_json) per job
local pass_id, cursor = ARGV[2], ARGV[3]
local state = redis.call('HGET', pkey(pass_id), 'state')
if not state then return {'notfound'} end
if state ~= 'planning' then return {'precondition', 'pass ' .. pass_id .. ' is ' .. state .. ', not planning'} end
local created = 0
for i = 4, #ARGV, 4 do
  created = created + create_job(pass_id, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
end
redis.call('HINCRBY', pkey(pass_id), 'videos', created)
if cursor ~= '' then redis.call('HSET', pkey(pass_id), 'cursor', cursor) end
return {'ok', tostring(created)}
