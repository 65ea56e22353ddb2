-- reclaim.lua: claim entries idle longer than a lease, one page of the pending list.
--
-- KEYS    [1] stream        the queue's stream
-- ARGV    [1] group         the consumer group
--         [2] consumer      the claiming consumer
--         [3] min_idle      ms an entry must have been idle to be claimed
--         [4] count         most pending entries looked at (one page)
--         [5] start         the page's first id ('-': from the start; '(id': after id)
--         [6] owner         only entries held by this consumer ('' = any consumer): a
--                           worker recovers its own pending entries at start
-- REPLY   {entries, counts, missing, next}:
--           entries  array of {id, {field, value, ...}}: the claimed entries;
--           counts   flat array id, delivery count, id, delivery count, ...: each
--                    claimed entry's delivery count after this claim (integers);
--           missing  array of ids: pending entries deleted from the stream;
--           next     the next page's start ('(' .. last id of this page), or '' when
--                    the scan is done (a short page).
-- ATOMIC  Claiming (XCLAIM, min-idle checked again by Redis) and acking the missing ids
--         (so the pending list is cleaned; the caller reports the loss) happen together.
-- ERRORS  NOGROUP when the stream or group is missing.
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local count = tonumber(ARGV[4])
local pend
if ARGV[6] ~= nil and ARGV[6] ~= '' then
  pend = redis.call('XPENDING', stream, group, 'IDLE', ARGV[3], ARGV[5], '+', count, ARGV[6])
else
  pend = redis.call('XPENDING', stream, group, 'IDLE', ARGV[3], ARGV[5], '+', count)
end
if #pend == 0 then return {{}, {}, {}, ''} end
local ids, deliveries = {}, {}
for i, p in ipairs(pend) do
  ids[i] = p[1]
  deliveries[p[1]] = p[4] + 1
end
local claimed = {}
in_slices(ids, function(slice)
  for _, e in ipairs(redis.call('XCLAIM', stream, group, consumer, ARGV[3], unpack(slice))) do
    claimed[#claimed + 1] = e
  end
end)
local entries, counts, seen = {}, {}, {}
for _, e in ipairs(claimed) do
  if e[2] ~= nil and e[2] ~= false then
    entries[#entries + 1] = e
    counts[#counts + 1] = e[1]
    counts[#counts + 1] = deliveries[e[1]]
    seen[e[1]] = true
  end
end
local missing = {}
for _, id in ipairs(ids) do
  if not seen[id] and redis.call('XRANGE', stream, id, id)[1] == nil then
    missing[#missing + 1] = id
    redis.call('XACK', stream, group, id)
  end
end
local nxt = ''
if #pend == count then nxt = '(' .. pend[#pend][1] end
return {entries, counts, missing, nxt}
