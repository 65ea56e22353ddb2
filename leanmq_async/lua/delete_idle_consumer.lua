-- delete_idle_consumer.lua: delete a consumer, but only while it holds nothing.
--
-- KEYS    [1] stream        the stream
-- ARGV    [1] group         the consumer group
--         [2] consumer      the consumer to delete
-- REPLY   integer: 1 deleted; 0 kept (it has pending entries: XGROUP DELCONSUMER would
--         drop them, losing their delivery state).
-- ATOMIC  The pending check and the deletion happen together: the consumer cannot be
--         handed an entry in between.
-- ERRORS  NOGROUP when the stream or group is missing.
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
