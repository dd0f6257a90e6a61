-- ARGV: prefix, job_id, lease_id, now_ms, result_url, then (job_id, url, spec_json) per segment job
local id, lease, now, result = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local job, err = check_lease(id, lease, 'pass', 'seq', 'started', 'probe')
if err then return err end
if #ARGV > 5 and job[6] ~= '1' then return {'invalid', 'job ' .. id .. ' is a segment job and cannot be split further'} end
move(id, job[3], 'leased', 'done', job[4])
if result ~= '' then redis.call('HSET', jkey(id), 'result', result) end
finished(job[3], now)
local created = 0
for i = 6, #ARGV, 3 do
  created = created + create_job(job[3], ARGV[i], ARGV[i + 1], '0', ARGV[i + 2])
end
return {'ok', string.format('%d', now - tonumber(job[5])), tostring(created)}
