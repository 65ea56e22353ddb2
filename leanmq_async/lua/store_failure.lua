-- store_failure.lua: store a dead-lettered message's failure record and announce it.
--
-- KEYS    [1] stream        the queue's stream
--         [2] result        the result key ({prefix}{queue}:result:<message_id>)
-- ARGV    [1] group         the consumer group the entry is pending in
--         [2] consumer      the consumer that must hold the entry
--         [3] id            the entry's stream id
--         [4] record        the failure record (b'd' + JSON: reason, error_type, ...)
--         [5] ttl_ms        how long the record is kept (ms)
--         [6] channel       the pub/sub channel announcing results ({prefix}results)
--         [7] inline_max    records up to this many bytes travel in the announcement
-- REPLY   1 stored (and announced), 0 not: ``consumer`` does not hold the entry.
-- ATOMIC  Runs in one MULTI right before dead_letter.lua, with the same ownership test:
--         the failure record is stored (and announced) exactly when the entry moves to
--         the DLQ, never for an entry another consumer holds. The announcement is
--         '<len(key)>:<key>' followed by the record when it is at most inline_max bytes.
-- ERRORS  'WRONGTYPE ...' before anything is written when the stream or the result key
--         holds another type; a missing stream or group is reply 0, not an error.
local bad = check_types(KEYS, {'stream', 'string'})
if bad then return redis.error_reply(bad) end
if pending_owner(KEYS[1], ARGV[1], ARGV[3], true) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
local note = #KEYS[2] .. ':' .. KEYS[2]
if #ARGV[4] <= tonumber(ARGV[7]) then note = note .. ARGV[4] end
redis.call('PUBLISH', ARGV[6], note)
return 1
