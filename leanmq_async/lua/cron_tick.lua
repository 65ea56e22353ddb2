-- cron_tick.lua: enqueue the run of one tick of a periodic job, once, whoever asks first.
--
-- KEYS    [1] state         hash of the job ({prefix}{cron.<job>}:cron): last, next, runs, ...
--         [2] stream        the job's queue (its run messages)
--         [3] delayed       zset of the job's queue: delayed member -> due time (ms)
--         [4] delayed_data  hash of the job's queue: delayed member -> packed fields
-- ARGV    [1] tick          the tick to run (ms since the epoch, UTC)
--         [2] next          the tick after it (ms; recorded for listings)
--         [3] late_ms       0: run the tick however late; > 0: a tick more than this many ms
--                           in the past (Redis clock) is skipped: recorded as done, not run
--         [4] delay_ms      jitter: 0 writes the run to the stream now; > 0 writes it as a
--                           delayed entry due now + delay_ms (moved by the worker's mover)
--         [5] field         the envelope's field name
--         [6] body          the envelope's body (the run message)
--         [7] suffix        the delayed member's suffix (used only when delay_ms > 0)
--         [8] clock shift   (ms; 0 in production)
-- REPLY   {status, last, wait_ms}: status 1 = the run was written (by this call), 0 = the tick
--         was done already (tick <= the job's last tick: another worker, or a later tick,
--         came first), 2 = skipped (too late; recorded), 3 = not due yet on the Redis clock
--         (nothing written; wait_ms until it is). last: the job's last tick after the call
--         (-1: none). wait_ms is 0 unless status is 3.
-- ATOMIC  The compare-and-set of the job's last tick and the write of its run message
--         happen together: of any number of calls for one tick (any number of workers),
--         exactly one writes the run, and a tick at or before the last one never runs.
--         Writes, when status is 1 or 2: state's last, next, scheduled_at (Redis ms),
--         status ('enqueued' or 'skipped'), run_id, and the counter runs or skipped.
-- ERRORS  'WRONGTYPE key K holds a T, not a W' before anything is written.
local bad = check_types(KEYS, {'hash', 'stream', 'zset', 'hash'})
if bad then return redis.error_reply(bad) end
local tick, nxt = tonumber(ARGV[1]), ARGV[2]
local late, delay = tonumber(ARGV[3]), tonumber(ARGV[4])
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '-1')
if tick <= last then return {0, last, 0} end
local now = now_ms(ARGV[8])
if tick > now then return {3, last, tick - now} end
local run_id = ''
local status = 'enqueued'
if late > 0 and now - tick > late then
  status = 'skipped'
  redis.call('HINCRBY', KEYS[1], 'skipped', 1)
elseif delay > 0 then
  run_id = string.format('%015.0f%06d|', now, 0) .. ARGV[7]
  redis.call('ZADD', KEYS[3], now + delay, run_id)
  redis.call('HSET', KEYS[4], run_id, cmsgpack.pack({ARGV[5], ARGV[6]}))
  redis.call('HINCRBY', KEYS[1], 'runs', 1)
else
  run_id = redis.call('XADD', KEYS[2], '*', ARGV[5], ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'runs', 1)
end
redis.call('HSET', KEYS[1], 'last', ARGV[1], 'next', nxt, 'scheduled_at',
  string.format('%.0f', now), 'status', status, 'run_id', run_id)
if status == 'skipped' then return {2, tick, 0} end
return {1, tick, 0}
