-- store_result.lua: store a handler's result, ack its entry and announce the result.
--
-- KEYS    [1] stream        the queue's stream
--         [2] result        the result key ({prefix}{queue}:result:<message_id>)
-- ARGV    [1] group         the consumer group the entry is pending in
--         [2] id            the entry's stream id
--         [3] record        the stored record (b'j' / b'm' + the encoded value)
--         [4] ttl_ms        how long the result is kept (ms)
--         [5] channel       the pub/sub channel announcing results ({prefix}results)
--         [6] inline_max    records up to this many bytes travel in the announcement
-- REPLY   XACK's count: 1 acked now, 0 acked already (the result is stored either way).
-- ATOMIC  The SET (expiring after ttl_ms), the XACK and the PUBLISH happen together: an
--         acknowledged entry always has its result, and a message run again
--         (at-least-once) overwrites it. The announcement is '<len(key)>:<key>' followed
--         by the record when it is at most inline_max bytes (else a waiter GETs it).
-- ERRORS  'WRONGTYPE ...' before anything is written when the stream or the result key
--         holds another type; NOGROUP from XACK (after the SET) when the group is missing.
local bad = check_types(KEYS, {'stream', 'string'})
if bad then return redis.error_reply(bad) end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
local note = #KEYS[2] .. ':' .. KEYS[2]
if #ARGV[3] <= tonumber(ARGV[6]) then note = note .. ARGV[3] end
redis.call('PUBLISH', ARGV[5], note)
return acked
