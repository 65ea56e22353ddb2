-- requeue.lua: move entries from the dead-letter queue back to the main stream.
--
-- KEYS    [1] dlq           the dead-letter queue's stream
--         [2] stream        the main queue's stream
--         [3] expiry        the main queue's expiry index (not written: requeued
--                           entries lose their expiry; named for the cluster slot)
-- ARGV    [1] dlq_group     the DLQ's consumer group (the requeued entries are acked in it)
--         [2..] ids         DLQ stream ids (a caller sends at most 1,000 per call)
-- REPLY   integer: the number of entries requeued.
-- ATOMIC  Per entry: the copy is added to the stream, and the DLQ entry acked and
--         deleted, together. The copy drops the dlq.* metadata, the attempts ('a'), the
--         expiry ('x'), the old target ('g') and a rate-limit reservation ('rl'), and is
--         targeted (g) at the group that failed it (dlq.group), if one did: '' (expired
--         for a stream without groups) means every group gets it again. A missing id is
--         skipped; a tombstone (only dlq.* fields) has nothing to requeue and stays in
--         the DLQ.
-- ERRORS  'WRONGTYPE ...' before anything is moved.
local bad = check_types({KEYS[1], KEYS[2]}, {'stream', 'stream'})
if bad then return redis.error_reply(bad) end
local moved = 0
for k = 2, #ARGV do
  local id = ARGV[k]
  local old = entry_fields(KEYS[1], id)
  if old ~= nil then
    local fields, target = {}, nil
    for i = 1, #old, 2 do
      local name = old[i]
      if name == 'dlq.group' then target = old[i + 1] end
      if string.sub(name, 1, 4) ~= 'dlq.' and name ~= 'a' and name ~= 'x' and name ~= 'g'
        and name ~= 'rl' then
        fields[#fields + 1] = name
        fields[#fields + 1] = old[i + 1]
      end
    end
    if #fields > 0 then
      if target and target ~= '' then
        fields[#fields + 1] = 'g'
        fields[#fields + 1] = target
      end
      redis.call('XADD', KEYS[2], '*', unpack(fields))
      redis.call('XACK', KEYS[1], ARGV[1], id)
      redis.call('XDEL', KEYS[1], id)
      moved = moved + 1
    end
  end
end
return moved
