-- expire_read.lua: settle an entry a reader found expired, if the Redis clock agrees.
--
-- KEYS    [1] stream        the queue's stream
--         [2] dlq           the dead-letter queue's stream
-- ARGV    [1] group         the reader's consumer group
--         [2] consumer      the reader, which must still own the entry
--         [3] policy        'drop' | 'dlq'
--         [4] queue         the source queue's name (dlq.queue)
--         [5] clock shift   ms (0 in production)
--         [6] id            the stream id
--         [7] expires_at    the entry's ``x`` (Redis clock, ms)
-- REPLY   integer: 0 not expired yet (now < expires_at): nothing done, the reader
--         handles the entry; 1 expired and settled for this group; -1 expired but no
--         longer owned by ``consumer``: nothing done.
-- ATOMIC  The reader's clock is an estimate; this call decides. Settling is an XACK
--         (policy 'drop'), or a DLQ copy (dlq.reason 'expired', dlq.group = group; a
--         tombstone if the entry is gone) and the XACK together (policy 'dlq').
-- ERRORS  'WRONGTYPE ...' (policy 'dlq') before anything is written; NOGROUP when the
--         group is missing.
local stream, dlq, group, consumer, id = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[6]
if now_ms(ARGV[5]) < tonumber(ARGV[7]) then return 0 end
if pending_owner(stream, group, id) ~= consumer then return -1 end
if ARGV[3] == 'dlq' then
  local bad = check_types(KEYS, {'stream', 'stream'})
  if bad then return redis.error_reply(bad) end
  local fields = entry_fields(stream, id)
  local name = entry_name(stream, id)
  add_dead_letter(dlq, fields, expired_meta(time_text(), ARGV[4], name, group))
end
redis.call('XACK', stream, group, id)
return 1
