-- requeue.lua: move entries from the dead-letter queue back to the stream they came from.
--
-- KEYS    [1] dlq           the dead-letter queue's stream
--         [2] stream        the main queue's stream
--         [3] expiry        the main queue's expiry index (not written: requeued
--                           entries lose their expiry; named for the cluster slot)
--         [4] low           optional: the stream of priority level 0 (see priority.py)
--         [5] high          optional: the stream of priority level 2
-- ARGV    [1] dlq_group     the DLQ's consumer group (the requeued entries are acked in it)
--         [2..] ids         DLQ stream ids (a caller sends at most 1,000 per call)
-- REPLY   integer: the number of entries requeued.
-- ATOMIC  Per entry: the copy is added to the stream, and the DLQ entry acked and
--         deleted, together. The copy drops the dlq.* metadata, the attempts ('a'), the
--         expiry ('x'), the old target ('g') and a rate-limit reservation ('rl'), and is
--         targeted (g) at the group that failed it (dlq.group), if one did: '' (expired
--         for a stream without groups) means every group gets it again. A missing id is
--         skipped; a tombstone (only dlq.* fields) has nothing to requeue and stays in
--         the DLQ. An entry of a priority level (its dlq.id ends in ':p0' or ':p2') goes
--         back to that level's stream when [4] and [5] are given (a level stream created
--         here gets the main stream's groups), else to the main stream.
-- ERRORS  'WRONGTYPE ...' before anything is moved.
local bad, absent = check_types({KEYS[1], KEYS[2], KEYS[4], KEYS[5]}, {'stream'})
if bad then return redis.error_reply(bad) end
local levels = {['0'] = KEYS[4], ['2'] = KEYS[5]}
local moved = 0
for k = 2, #ARGV do
  local id = ARGV[k]
  local old = entry_fields(KEYS[1], id)
  if old ~= nil then
    local fields, target, into = {}, nil, KEYS[2]
    for i = 1, #old, 2 do
      local name = old[i]
      if name == 'dlq.group' then target = old[i + 1] end
      if name == 'dlq.id' then
        into = levels[string.match(old[i + 1], ':p(%d)$') or ''] or KEYS[2]
      end
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
      redis.call('XADD', into, '*', unpack(fields))
      if absent[into] and into ~= KEYS[2] then
        copy_groups(KEYS[2], into)
        absent[into] = nil
      end
      redis.call('XACK', KEYS[1], ARGV[1], id)
      redis.call('XDEL', KEYS[1], id)
      moved = moved + 1
    end
  end
end
return moved
