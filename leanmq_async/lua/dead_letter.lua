-- dead_letter.lua: move entries pending in a group to the dead-letter queue.
--
-- KEYS    [1] stream        the queue's stream
--         [2] dlq           the dead-letter queue's stream
-- ARGV    [1] group         the consumer group the entries are pending in
--         [2] consumer      only entries this consumer owns ('' = any consumer of the group)
--         [3] queue         the source queue's name (dlq.queue)
--         [4] n             the number of entries
--         per entry k = 0 .. n-1, at b = 5 + 5k:
--           [b]   id          the stream id
--           [b+1] reason      dlq.reason (text)
--           [b+2] error_type  dlq.error (an exception's type name, or '')
--           [b+3] traceback   dlq.traceback (text, or '')
--           [b+4] attempts    dlq.attempts (the attempts made)
-- REPLY   array of n status strings, in ARGV's order:
--           'moved'        copied to the DLQ and acked;
--           'not_owned'    (``consumer`` given) held by another consumer, or not pending;
--           'not_pending'  in the stream, not pending in the group (never delivered, or
--                          acked already): left where it is;
--           'not_found'    neither in the stream nor pending.
-- ATOMIC  Per entry, the DLQ copy (the entry's fields, then dlq.reason, dlq.error,
--         dlq.traceback, dlq.attempts, dlq.at (Redis clock, 'sec.usec'), dlq.queue,
--         dlq.id, dlq.group) and the XACK happen together: a move, never a copy of an
--         entry the group was not delivered or already acked. An entry gone from the
--         stream but still pending (delivered, then deleted) leaves a tombstone
--         (dlq.missing = 1 instead of its fields): the loss is recorded, never hidden.
-- ERRORS  'WRONGTYPE ...' before anything is moved; NOGROUP when ``consumer`` is given
--         and the group is missing (with consumer '' a missing group is 'not_found' /
--         'not_pending').
local stream, dlq, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local bad = check_types(KEYS, {'stream', 'stream'})
if bad then return redis.error_reply(bad) end
local at = time_text()
local out = {}
for k = 0, tonumber(ARGV[4]) - 1 do
  local b = 5 + k * 5
  local id = ARGV[b]
  local fields = entry_fields(stream, id)
  local status = 'moved'
  if consumer ~= '' then
    if pending_owner(stream, group, id) ~= consumer then status = 'not_owned' end
  elseif pending_owner(stream, group, id, true) == nil then
    status = fields and 'not_pending' or 'not_found'
  end
  if status == 'moved' then
    add_dead_letter(dlq, fields, {reason = ARGV[b + 1], error = ARGV[b + 2],
      traceback = ARGV[b + 3], attempts = ARGV[b + 4], at = at, queue = ARGV[3],
      id = entry_name(stream, id),
      group = group})
    redis.call('XACK', stream, group, id)
  end
  out[#out + 1] = status
end
return out
