-- claim.lua: claim up to n new entries of one queue for a group, level by level, without
-- blocking (the priority read; see leanmq_async/priority.py).
--
-- KEYS    [1..k] the queue's level streams, in the order to read them (highest priority
--                first; the starvation guard's claim passes them lowest first)
-- ARGV    [1] group   [2] consumer   [3] n: most entries to claim in all
--         [4] the 1-based index into KEYS of the main stream (the default level)
-- REPLY   array of k + 1 items: for each key in KEYS' order, the entries claimed from it
--         (XREADGROUP's: {id, {field, value, ...}}, possibly none); then, when nothing at
--         all was claimed, each stream's last generated id in KEYS' order ('0-0' for a
--         stream that does not exist): where a non-consuming XREAD BLOCK waits for more.
--         Otherwise an empty array.
-- ATOMIC  Each level is read with XREADGROUP COUNT (n - claimed so far), so no more than
--         n entries are claimed. A level stream that exists without the group gets it at
--         id 0 (as create_groups.lua does on the main stream), so no entry is skipped.
-- ERRORS  The main stream's XREADGROUP error as is (NOGROUP when its stream or group is
--         missing: the worker's recovery creates them again); a level's XGROUP errors.
local group, consumer, n, main = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out, got = {}, 0
for i, key in ipairs(KEYS) do
  out[i] = {}
  if got < n and (i == main or redis.call('EXISTS', key) == 1) then
    local args = {'XREADGROUP', 'GROUP', group, consumer, 'COUNT', n - got, 'STREAMS', key, '>'}
    local r
    if i == main then
      r = redis.call(unpack(args))
    else
      r = redis.pcall(unpack(args))
      if type(r) == 'table' and r.err then
        if not string.find(r.err, 'NOGROUP', 1, true) then return redis.error_reply(r.err) end
        redis.call('XGROUP', 'CREATE', key, group, '0')
        r = redis.call(unpack(args))
      end
    end
    if r and r[1] then
      out[i] = r[1][2]
      got = got + #out[i]
    end
  end
end
local last = {}
if got == 0 then
  for i, key in ipairs(KEYS) do
    last[i] = '0-0'
    if redis.call('EXISTS', key) == 1 then
      local info = redis.call('XINFO', 'STREAM', key)
      last[i] = field(info, 'last-generated-id') or '0-0'
    end
  end
end
out[#KEYS + 1] = last
return out
