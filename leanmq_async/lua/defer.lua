-- defer.lua: hold a message over its rate limit in the delayed set until its granted start.
--
-- KEYS    [1] stream        the queue's stream
--         [2] delayed       zset: delayed member -> due time (Redis clock, ms)
--         [3] delayed_data  hash: delayed member -> cmsgpack-packed field list
--         [4] cancelled     zset: entry name -> end of its cancel marker (ms; cancel.lua:
--                           a priority level's entry is '<id>:p<level>', entry_name)
--         (all four of the entry's priority level: a deferral keeps its priority)
-- ARGV    [1] group         the consumer group whose handler is rate limited
--         [2] consumer      the consumer that must still own the entry
--         [3] id            the stream id
--         [4] start         ms on the Redis clock: the start granted by lua/rate_limit.lua
--         [5] clock shift   ms (0 in production)
-- REPLY   integer: 1 deferred; 0 the entry is gone from the stream (acked anyway);
--         -1 ``consumer`` no longer owns it (its lease was taken over): nothing done;
--         2 the message was cancelled (a live marker in ``cancelled``): nothing done, it
--         stays pending for the caller to dead-letter (reason 'cancelled'), never run.
-- ATOMIC  The copy (every field but 'g' and 'rl', unchanged: attempts 'a', expiry 'x',
--         headers; then rl = start, the reservation it holds, and g = group: only this
--         group gets it again) is stored as the delayed member 'group|id', due at
--         ``start``, and the original acked, together. Not a failure: 'a' is not counted
--         up. The delayed mover (lua/move_due.lua) brings it back when it is due.
-- ERRORS  'WRONGTYPE ...' before anything is written; NOGROUP when the group is missing.
local stream, group, consumer, id = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local bad = check_types(KEYS, {'stream', 'zset', 'hash', 'zset'})
if bad then return redis.error_reply(bad) end
if pending_owner(stream, group, id) ~= consumer then return -1 end
if cancel_marked(KEYS[4], stream, id, ARGV[5]) then return 2 end
local old = entry_fields(stream, id)
if old == nil then
  redis.call('XACK', stream, group, id)
  return 0
end
local fields = copy_without(old, {g = true, rl = true}, {'rl', ARGV[4], 'g', group})
local member = group .. '|' .. id
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), member)
redis.call('HSET', KEYS[3], member, cmsgpack.pack(fields))
redis.call('XACK', stream, group, id)
return 1
