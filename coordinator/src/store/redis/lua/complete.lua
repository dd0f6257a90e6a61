-- ARGV: prefix, job_id, lease_id, now_ms, result (stored form, '' for none), result template
-- ('' when the caller knows the pass has one), skipped ('1' when the video was indexed already:
-- counted in the pass's `skipped`), then (where, version) per segment job (the caller checked
-- that the job is a probe job).
-- A done job's `v` field is dropped (its evidence document records the video's version) and its
-- result kept in `r`; the first result of a pass becomes the template later ones are stored against.
local id, lease_id, now, result, template = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local skipped = ARGV[7] == '1'
local held, err = check_lease(id, lease_id)
if err then return err end
local pass_id, n, job = held.pass_id, held.n, held.job
local pass = pkey(pass_id)
local b = bucket(pass_id, n)
write_job(pass_id, n, 'done', job.attempt, job.rest)
count(pass_id, n, 'leased', 'done')
drop_lease(id)
redis.call('HDEL', b, slot(n) .. 'v')
if result ~= '' then redis.call('HSET', b, slot(n) .. 'r', result) end
if template ~= '' then redis.call('HSETNX', pass, 'result_template', template) end
if skipped then redis.call('HINCRBY', pass, 'skipped', 1) end
finished(pass_id, now)
local created = 0
if #ARGV > 7 then
  local seq = tonumber(redis.call('HGET', pass, 'seq'))
  for i = 8, #ARGV, 2 do
    seq = seq + 1
    created = created + 1
    redis.call('HSET', bucket(pass_id, seq), slot(seq), 'p0|' .. ARGV[i], slot(seq) .. 'v', ARGV[i + 1])
  end
  redis.call('HSET', pass, 'seq', seq)
  redis.call('HINCRBY', pass, 'n:pending', created)
  redis.call('ZADD', P .. ':runnable', 'NX', redis.call('HGET', pass, 'order'), pass_id)
end
return {'ok', string.format('%d', now - held.lease.started), tostring(created)}
