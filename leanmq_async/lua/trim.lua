-- trim.lua: trim the history every group has acknowledged and that is old enough.
--
-- KEYS    [1] stream        the stream to trim
-- ARGV    [1] max_age       ms: only entries older than this are trimmed
--         [2] clock shift   ms (0 in production)
-- REPLY   integer: the number of entries trimmed (0 for a stream without groups).
-- ATOMIC  The safe cut is computed and applied (XTRIM MINID) in one step: below every
--         group's oldest pending entry (or, with none pending, just after its
--         last-delivered id) and below now - max_age. An entry some group has not read
--         or not acked is never removed.
-- ERRORS  none expected (a missing stream trims nothing).
local groups = groups_of(KEYS[1])
if #groups == 0 then return 0 end
local safe = nil
for _, g in ipairs(groups) do
  local candidate
  local summary = redis.call('XPENDING', KEYS[1], g['name'])
  if tonumber(summary[1]) > 0 then
    candidate = summary[2]
  else
    local ms, seq = id_parts(g['last-delivered-id'])
    candidate = ms .. '-' .. (seq + 1)
  end
  if safe == nil or id_less(candidate, safe) then safe = candidate end
end
local cutoff = (now_ms(ARGV[2]) - tonumber(ARGV[1])) .. '-0'
if id_less(cutoff, safe) then safe = cutoff end
return redis.call('XTRIM', KEYS[1], 'MINID', safe)
