-- ARGV: prefix, job_id, lease_id, extend_ms (0 keeps the lease's duration), now_ms
local id, lease, extend, now = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local job, err = check_lease(id, lease, 'dur', 'pass')
if err then return err end
local duration = extend
if duration <= 0 then duration = tonumber(job[3]) end
local deadline = now + duration
redis.call('HSET', jkey(id), 'deadline', deadline)
redis.call('ZADD', P .. ':leases', deadline, id)
local cancelled = '0'
if stopped(redis.call('HGET', pkey(job[4]), 'state')) then cancelled = '1' end
return {'ok', string.format('%d', deadline), cancelled}
