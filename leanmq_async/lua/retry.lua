-- retry.lua: acknowledge an entry and schedule its next attempt, in one step.
--
-- KEYS    [1] stream        the queue's stream
--         [2] delayed       zset: delayed member -> due time (Redis clock, ms)
--         [3] delayed_data  hash: delayed member -> cmsgpack-packed field list
--         [4] expiry        zset: stream id -> expiry time (ms)
--         [5] cancelled     zset: entry name -> end of its cancel marker (ms; cancel.lua:
--                           a priority level's entry is '<id>:p<level>', entry_name)
-- ARGV    [1] group         the consumer group that failed the entry
--         [2] consumer      the consumer that must still own it
--         [3] id            the stream id
--         [4] delay         ms until the retry (0: at once, at the stream's tail)
--         [5] attempts      the copy's ``a`` field (the attempt number it will be)
--         [6] clock shift   ms (0 in production)
-- REPLY   integer: 1 scheduled; 0 the entry is gone from the stream (acked anyway);
--         -1 ``consumer`` no longer owns it (its lease was taken over): nothing done;
--         2 the message was cancelled (a live marker in ``cancelled``): nothing done, it
--         stays pending for the caller to dead-letter (reason 'cancelled'), never retried.
-- ATOMIC  The copy (fields without 'a', 'g' and 'rl' (a rate-limit reservation: the
--         retry asks the limiter again), then a = attempts, g = group: only this group
--         gets it again) is written (to the stream, or as the delayed member
--         'group|id') and the original acked together.
-- ERRORS  'WRONGTYPE ...' before anything is written; NOGROUP when the group is missing.
local stream, group, consumer, id = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local bad = check_types(KEYS, {'stream', 'zset', 'hash', 'zset', 'zset'})
if bad then return redis.error_reply(bad) end
if pending_owner(stream, group, id) ~= consumer then return -1 end
if cancel_marked(KEYS[5], stream, id, ARGV[6]) then return 2 end
local old = entry_fields(stream, id)
if old == nil then
  redis.call('XACK', stream, group, id)
  return 0
end
local fields = copy_without(old, {a = true, g = true, rl = true}, {'a', ARGV[5], 'g', group})
local delay = tonumber(ARGV[4])
if delay > 0 then
  local member = group .. '|' .. id
  redis.call('ZADD', KEYS[2], now_ms(ARGV[6]) + delay, member)
  redis.call('HSET', KEYS[3], member, cmsgpack.pack(fields))
else
  local new = redis.call('XADD', stream, '*', unpack(fields))
  local x = field(fields, 'x')
  if x then redis.call('ZADD', KEYS[4], x, new) end
end
redis.call('XACK', stream, group, id)
return 1
