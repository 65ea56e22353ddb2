-- cancel.lua: cancel one message by id: remove it if no group started it, else mark it.
--
-- KEYS    [1] stream        the queue's main stream (the default priority level's)
--         [2] dlq           the dead-letter queue's stream
--         [3] delayed       zset: delayed member -> due time (Redis clock, ms)
--         [4] delayed_data  hash: delayed member -> cmsgpack-packed field list
--         [5] expiry        zset: stream id -> expiry time (ms)
--         [6] dedup         hash: message_id -> "<until ms> <id first returned>"
--         [7] cancelled     zset: entry name -> end of its cancel marker (Redis clock, ms)
--         [8] [9] [10] [11] priority level 0's stream, delayed, delayed_data, expiry
--         [12] [13] [14] [15] priority level 2's stream, delayed, delayed_data, expiry
-- ARGV    [1] id            an entry's name (a stream id, or '<stream id>:p<level>' for a
--                           priority level's entry: leanmq_async/priority.py), a delayed
--                           member (what a delayed send returned; looked up in every
--                           level's delayed set), or the message_id of an idempotent send
--                           (looked up in dedup)
--         [2] queue         the queue's name (dlq.queue)
--         [3] marker_ms     how long a cancel marker is kept (ms)
--         [4] channel       the pub/sub channel announcing cancel requests
--         [5] announcement  the text published, followed by ' ' and the entry name
--         [6] clock shift   ms (0 in production)
-- REPLY   {status, id}: bulk strings; id is the entry name or delayed member resolved
--         (entry_name: a level's entry names its level, as everywhere ids leave the store;
--         the marker's member, the announcement and dlq.id use that name), status:
--           'cancelled'  no group had started it: a delayed member is removed and
--                        dead-lettered once (dlq.group = its target group, '' = every
--                        group); a stream entry is dead-lettered once per group that had
--                        not read it yet, then deleted (with its expiry record); and a
--                        retry of it a group scheduled ('group|id' in delayed) is removed
--                        and dead-lettered for that group (also with 'running');
--           'running'    pending in some group (a handler has it): marked in ``cancelled``
--                        (until now + marker_ms) and announced on ``channel``; the
--                        worker cancels the handler and dead-letters it, and a group that
--                        reads it later dead-letters it unrun (both with reason 'cancelled');
--           'finished'   in the stream, read and acknowledged by every group it was for;
--           'not_found'  neither delayed nor in the stream (nor a known message_id).
-- ATOMIC  The removal and its dead letters (reason 'cancelled', error 'Cancelled'), or the
--         marker and its announcement, happen together; markers past their end are
--         dropped here, and the key expires marker_ms after the last cancel.
-- ERRORS  'WRONGTYPE ...' before anything is written.
local dlq, cancelled = KEYS[2], KEYS[7]
local bad = check_types(KEYS, {'stream', 'stream', 'zset', 'hash', 'zset', 'hash', 'zset',
  'stream', 'zset', 'hash', 'zset', 'stream', 'zset', 'hash', 'zset'})
if bad then return redis.error_reply(bad) end
-- level -> {stream, delayed, delayed_data, expiry}
local levels = {['0'] = {KEYS[8], KEYS[9], KEYS[10], KEYS[11]},
  ['1'] = {KEYS[1], KEYS[3], KEYS[4], KEYS[5]}, ['2'] = {KEYS[12], KEYS[13], KEYS[14], KEYS[15]}}
-- The level and the stream id of an entry's name ('<sid>' or '<sid>:p<level>'), or nil.
local function parse(s)
  if string.match(s, '^%d+%-%d+$') then return '1', s end
  local sid, level = string.match(s, '^(%d+%-%d+):p(%d)$')
  if sid and levels[level] then return level, sid end
  return nil
end
-- The level whose delayed set holds member ``s``, or nil.
local function delayed_level(s)
  for _, level in ipairs({'1', '2', '0'}) do
    if redis.call('ZSCORE', levels[level][2], s) then return level end
  end
  return nil
end
local id = ARGV[1]
local level, sid = parse(id)
local member_level = level == nil and delayed_level(id)
if level == nil and not member_level then
  local record = redis.call('HGET', KEYS[6], id)
  if record then id = string.match(record, '^%S+ (.+)$') or id end
  level, sid = parse(id)
  member_level = level == nil and delayed_level(id)
end
local at = time_text()
local function dead(fields, group, name)
  add_dead_letter(dlq, fields, {reason = 'cancelled', error = 'Cancelled', traceback = '',
    attempts = field(fields, 'a') or '0', at = at, queue = ARGV[2], id = name, group = group})
end
if level == nil then
  if not member_level then return {'not_found', id} end
  local keys = levels[member_level]
  local packed = redis.call('HGET', keys[3], id)
  redis.call('ZREM', keys[2], id)
  redis.call('HDEL', keys[3], id)
  if not packed then return {'not_found', id} end
  local fields = cmsgpack.unpack(packed)
  -- dlq.id names the level (entry_name): a requeue puts it back into its level's stream.
  dead(fields, field(fields, 'g') or '', entry_name(keys[1], id))
  return {'cancelled', id}
end
local stream, delayed, delayed_data, expiry = unpack(levels[level])
id = entry_name(stream, sid)  -- the name users see: also the marker's member
local fields = entry_fields(stream, sid)
if not fields then return {'not_found', id} end
local target = field(fields, 'g')
if target == '' then target = nil end
local running, waiting, retried = false, {}, false
for _, g in ipairs(groups_of(stream)) do
  local name = g['name']
  if target == nil or target == name then
    if pending_owner(stream, name, sid) then
      running = true
    elseif id_less(g['last-delivered-id'], sid) then
      waiting[#waiting + 1] = name
    else
      local member = name .. '|' .. sid
      local packed = redis.call('HGET', delayed_data, member)
      if redis.call('ZREM', delayed, member) == 1 then
        redis.call('HDEL', delayed_data, member)
        if packed then dead(cmsgpack.unpack(packed), name, id) end
        retried = true
      end
    end
  end
end
if running then
  local now = now_ms(ARGV[6])
  local ttl = tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', cancelled, '-inf', now)
  redis.call('ZADD', cancelled, now + ttl, id)
  redis.call('PEXPIRE', cancelled, ttl)
  redis.call('PUBLISH', ARGV[4], ARGV[5] .. ' ' .. id)
  return {'running', id}
end
if #waiting == 0 then return {retried and 'cancelled' or 'finished', id} end
for _, name in ipairs(waiting) do dead(fields, name, id) end
redis.call('XDEL', stream, sid)
redis.call('ZREM', expiry, sid)
return {'cancelled', id}
