-- ARGV: prefix, job_id, lease_id, now_ms
-- Hands a leased job back unfinished: it goes to the front of the queue (requeued jobs are leased
-- before never-leased ones) and gets back the attempt its lease counted, so its next lease
-- carries the same attempt number. A job of a stopped pass becomes cancelled instead. The pass
-- counts every release in `released`. Replies 'ok' and the job's new state.
local id, lease_id, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local held, err = check_lease(id, lease_id)
if err then return err end
local pass_id, n, job = held.pass_id, held.n, held.job
local pass = pkey(pass_id)
drop_lease(id)
redis.call('HINCRBY', pass, 'released', 1)
if stopped(redis.call('HGET', pass, 'state')) then
  write_job(pass_id, n, 'cancelled', job.attempt, job.rest)
  count(pass_id, n, 'leased', 'cancelled')
  finished(pass_id, now)
  return {'ok', 'cancelled'}
end
write_job(pass_id, n, 'pending', math.max(job.attempt - 1, 0), job.rest)
count(pass_id, n, 'leased', 'pending')
requeue(id)
return {'ok', 'pending'}
