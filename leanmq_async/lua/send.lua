-- send.lua: write a batch of messages to one or more queues, all or nothing.
--
-- KEYS    6 per queue (7 with the level flag below), queue q (1-based) at 6q-5 .. 6q:
--           stream        the queue's stream (or a priority level's: see priority.py)
--           expiry        zset: stream id -> expiry time (Redis clock, ms)
--           delayed       zset: delayed member -> due time (Redis clock, ms)
--           delayed_data  hash: delayed member -> cmsgpack-packed field list
--           dedup         hash: message_id -> "<until ms> <id first returned>"
--           dedup_until   zset: message_id -> until (Redis clock, ms)
--           main          only with the level flag: the queue's main stream, whose
--                         consumer groups a level stream this call creates gets (at 0)
-- ARGV    [1]       n: the number of messages
--         per message k = 0 .. n-1, at b = 2 + sk, where the stride s is 8 when
--         #ARGV = 2 + 8n (some message is deduplicated) and 6 otherwise (no dedup
--         arguments are sent, [b+6] and [b+7] are absent):
--           [b]     queue index q (1-based, into KEYS as above)
--           [b+1]   ttl (ms; 0 = no expiry): adds the field x = now + ttl
--           [b+2]   delay (ms; 0 = now): > 0 writes a delayed member, not a stream entry
--           [b+3]   the envelope's field name
--           [b+4]   the envelope's body (bytes)
--           [b+5]   member suffix (delayed messages: names the delayed member)
--           [b+6]   message_id (the dedup key; used only when [b+7] > 0)
--           [b+7]   dedup window (ms; 0 = not deduplicated)
--         [2+sn]    clock shift (ms; 0 in production)
--         [3+sn]    optional level flag ('1'): some block's stream is a priority level's,
--                   and every block has its 7th key (#ARGV - 2 is then odd)
-- REPLY   array of n bulk strings, in ARGV's order: the stream id of each message, or
--         for a delayed one its delayed member: the send time (15 digits, ms), the
--         message's index k (6 digits), '|', the suffix. Messages due at the same ms
--         sort by member, so they keep the order they were sent in. Then, as integers,
--         the 1-based positions of the messages that were duplicates (nothing written;
--         their id is the first send's as recorded: a priority level's entry with its
--         level, '<stream id>:p<level>', see entry_name).
-- DEDUP   A message with a window whose message_id was sent to the same queue less than
--         its window ago (on the Redis clock, counted from that first send) writes
--         nothing. Records expired are swept a few per call (100 + 2n per queue); both
--         dedup keys expire after the longest window of their last send.
-- ATOMIC  All or nothing: every key's type is checked before anything is written (the
--         dedup keys only for queues with a deduplicated message), and a write that
--         fails all the same (an XADD on a stream whose last id is the largest possible
--         one) undoes every write before it, dedup records included, and deletes the
--         streams this call created, so a batch (a transaction, send_messages) is
--         written whole or not at all.
-- ERRORS  'WRONGTYPE key K holds a T, not a W' (nothing written);
--         '<redis error> (CMD KEY; nothing of this batch was written)'.
local n = tonumber(ARGV[1])
local levels = (#ARGV - 2) % 2 == 1
local stride = (#ARGV - (levels and 3 or 2) == n * 8) and 8 or 6
local width = levels and 7 or 6  -- keys per queue
local deduped = {}  -- queue index (0-based) -> true: one of its messages is deduplicated
if stride == 8 then
  for op = 0, n - 1 do
    if tonumber(ARGV[9 + op * 8]) > 0 then deduped[tonumber(ARGV[2 + op * 8]) - 1] = true end
  end
end
local new_streams = {}
local fresh = {}  -- level streams this call creates: stream -> main stream (groups to copy)
for q = 0, #KEYS / width - 1 do
  local b = q * width
  local block = {KEYS[b + 1], KEYS[b + 2], KEYS[b + 3], KEYS[b + 4]}
  if deduped[q] then
    block[5], block[6] = KEYS[b + 5], KEYS[b + 6]
  end
  local bad, absent = check_types(block, {'stream', 'zset', 'zset', 'hash', 'hash', 'zset'})
  if bad then return redis.error_reply(bad) end
  if absent[KEYS[b + 1]] then
    new_streams[#new_streams + 1] = KEYS[b + 1]
    if levels and KEYS[b + 7] ~= KEYS[b + 1] then fresh[KEYS[b + 1]] = KEYS[b + 7] end
  end
end
local now = now_ms(ARGV[2 + n * stride])
local out, dups = {}, {}
-- What was written so far, to remove again if a later write fails: {command, key, member}.
local undo = {}
local function write(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r.err then
    for i = #undo, 1, -1 do redis.call(undo[i][1], undo[i][2], undo[i][3]) end
    -- XDEL leaves an empty stream behind: remove the streams this script created.
    for _, created in ipairs(new_streams) do redis.call('DEL', created) end
    return nil, r.err .. ' (' .. cmd .. ' ' .. key .. '; nothing of this batch was written)'
  end
  return r, nil
end
-- The id a message_id was first sent with, if within its window (nil: not sent). Sweeps
-- the queue's expired records first, once per call.
local swept, longest = {}, {}
local function first_send(base, mid)
  local h, z = KEYS[base + 5], KEYS[base + 6]
  if not swept[base] then
    swept[base] = true
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 100 + 2 * n)
    in_slices(old, function(ids) redis.call('HDEL', h, unpack(ids)) end)
    in_slices(old, function(ids) redis.call('ZREM', z, unpack(ids)) end)
  end
  local until_ms, id = string.match(redis.call('HGET', h, mid) or '', '^(%d+) (.*)$')
  if until_ms and tonumber(until_ms) > now then return id end
  return nil
end
for op = 0, n - 1 do
  local b = 2 + op * stride
  local base = (tonumber(ARGV[b]) - 1) * width
  local ttl, delay = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local mid, dedup = '', 0
  if stride == 8 then mid, dedup = ARGV[b + 6], tonumber(ARGV[b + 7]) end
  local fields = {ARGV[b + 3], ARGV[b + 4]}
  if ttl > 0 then
    fields[3] = 'x'
    fields[4] = tostring(now + ttl)
  end
  local _, err, sent
  if dedup > 0 then sent = first_send(base, mid) end
  if sent then
    out[#out + 1] = sent
    dups[#dups + 1] = op + 1
  elseif delay > 0 then
    local member = string.format('%015.0f%06d|', now, op) .. ARGV[b + 5]
    _, err = write('ZADD', KEYS[base + 3], now + delay, member)
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'ZREM', KEYS[base + 3], member}
    _, err = write('HSET', KEYS[base + 4], member, cmsgpack.pack(fields))
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'HDEL', KEYS[base + 4], member}
    out[#out + 1] = member
  else
    local id
    id, err = write('XADD', KEYS[base + 1], '*', unpack(fields))
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'XDEL', KEYS[base + 1], id}
    if fresh[KEYS[base + 1]] then
      copy_groups(fresh[KEYS[base + 1]], KEYS[base + 1])
      fresh[KEYS[base + 1]] = nil
    end
    if ttl > 0 then
      _, err = write('ZADD', KEYS[base + 2], now + ttl, id)
      if err then return redis.error_reply(err) end
      undo[#undo + 1] = {'ZREM', KEYS[base + 2], id}
    end
    out[#out + 1] = id
  end
  if dedup > 0 and not sent then
    -- The record names a level's entry with its level (entry_name), as the send returns
    -- it: a duplicate returns it as it is, and cancel.lua finds its level by it.
    local first = out[#out]
    if delay == 0 then first = entry_name(KEYS[base + 1], first) end
    _, err = write('HSET', KEYS[base + 5], mid, string.format('%.0f ', now + dedup) .. first)
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'HDEL', KEYS[base + 5], mid}
    _, err = write('ZADD', KEYS[base + 6], now + dedup, mid)
    if err then return redis.error_reply(err) end
    undo[#undo + 1] = {'ZREM', KEYS[base + 6], mid}
    longest[base] = math.max(longest[base] or 0, dedup)
  end
end
for base, ms in pairs(longest) do
  for k = base + 5, base + 6 do
    if redis.call('PTTL', KEYS[k]) < ms then redis.call('PEXPIRE', KEYS[k], ms) end
  end
end
for _, pos in ipairs(dups) do out[#out + 1] = pos end
return out
