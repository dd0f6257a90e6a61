-- ARGV: prefix, job_id, lease_id, extend_ms (0 keeps the lease's duration), now_ms
local id, lease_id, extend, now = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local held, err = check_lease(id, lease_id)
if err then return err end
local lease = held.lease
local duration = lease.dur
if extend > 0 then duration = extend end
lease.deadline = now + duration
write_lease(id, lease)
local cancelled = '0'
if stopped(redis.call('HGET', pkey(held.pass_id), 'state')) then cancelled = '1' end
return {'ok', string.format('%d', lease.deadline), cancelled}
