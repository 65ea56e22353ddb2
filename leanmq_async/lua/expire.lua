-- expire.lua: one bounded pass over a queue's expiry index.
--
-- KEYS    [1] stream        the queue's stream
--         [2] expiry        zset: stream id -> expiry time (Redis clock, ms)
--         [3] dlq           the dead-letter queue's stream
-- ARGV    [1] limit         most index members looked at by this call
--         [2] policy        'drop' | 'dlq': what an entry that expired unhandled becomes
--         [3] queue         the source queue's name (dlq.queue)
--         [4] clock shift   ms (0 in production)
--         [5] recheck       ms: when an entry still pending is looked at again
--         [6..] pairs       optional: group, that group's policy (overrides [2] for it)
-- REPLY   {scanned, removed, unhandled, rechecked, left}: integers. scanned: index
--         members looked at (== limit: there may be more); removed: entries deleted;
--         unhandled: entries that expired unhandled for at least one group
--         (dead-lettered or dropped); rechecked: pending entries re-scored; left: index
--         members still due after this call (counted up to ``limit``; 0 after a short
--         batch).
-- ATOMIC  At most ``limit`` entries whose ``x`` is due, each handled whole:
--         * pending in any group (delivered, not settled): never touched, that group's
--           consumer settles it; re-scored to now + recheck, so it never blocks the
--           front of the index;
--         * pending in no group: removed (XDEL, ZREM). Every group it is aimed at (only
--           the group of its ``g`` field, if it has one; else every group of the stream)
--           that was never delivered it has it expired unhandled: dropped, or, where
--           that group's policy is 'dlq', one DLQ entry (dlq.reason 'expired',
--           dlq.group = that group). A stream without groups counts as one group '';
--         * an index member whose entry is gone: only removed from the index.
--         Every DLQ copy is written before anything is removed or re-scored: if a write
--         fails, the script stops with the stream and the index untouched.
-- ERRORS  'WRONGTYPE ...' before anything is written (the dlq key is checked only when
--         some policy is 'dlq').
local policy_of = {}
local to_dlq = ARGV[2] == 'dlq'
for k = 6, #ARGV - 1, 2 do
  policy_of[ARGV[k]] = ARGV[k + 1]
  if ARGV[k + 1] == 'dlq' then to_dlq = true end
end
local function dead_letters(group) return (policy_of[group] or ARGV[2]) == 'dlq' end
local bad = check_types(to_dlq and KEYS or {KEYS[1], KEYS[2]}, {'stream', 'zset', 'stream'})
if bad then return redis.error_reply(bad) end
local now = now_ms(ARGV[4])
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ids == 0 then return {0, 0, 0, 0, 0} end
local groups = groups_of(KEYS[1])
local by_name = {}
for _, g in ipairs(groups) do by_name[g['name']] = g end
-- Per id: 'gone', 'pending', or {fields, missed = the groups it expired unhandled for}.
local plan = {}
for i, id in ipairs(ids) do
  local fields = entry_fields(KEYS[1], id)
  if fields == nil then
    plan[i] = 'gone'
  else
    local pending = false
    for _, g in ipairs(groups) do
      if pending_owner(KEYS[1], g['name'], id) ~= nil then
        pending = true
        break
      end
    end
    if pending then
      plan[i] = 'pending'
    else
      local target = field(fields, 'g')
      local missed = {}
      if target then
        local g = by_name[target]
        if g == nil or id_less(g['last-delivered-id'], id) then missed[1] = target end
      elseif #groups == 0 then
        missed[1] = ''
      else
        for _, g in ipairs(groups) do
          if id_less(g['last-delivered-id'], id) then missed[#missed + 1] = g['name'] end
        end
      end
      plan[i] = {fields = fields, missed = missed}
    end
  end
end
if to_dlq then
  local at = time_text()
  for i, id in ipairs(ids) do
    local p = plan[i]
    if type(p) == 'table' then
      for _, group in ipairs(p.missed) do
        if dead_letters(group) then
          local name = entry_name(KEYS[1], id)
          add_dead_letter(KEYS[3], p.fields, expired_meta(at, ARGV[3], name, group))
        end
      end
    end
  end
end
local removed, unhandled, rechecked = 0, 0, 0
local recheck_at = now + tonumber(ARGV[5])
for i, id in ipairs(ids) do
  local p = plan[i]
  if p == 'pending' then
    redis.call('ZADD', KEYS[2], recheck_at, id)
    rechecked = rechecked + 1
  else
    if p ~= 'gone' then
      removed = removed + redis.call('XDEL', KEYS[1], id)
      if #p.missed > 0 then unhandled = unhandled + 1 end
    end
    redis.call('ZREM', KEYS[2], id)
  end
end
-- No ZCOUNT (not in the documented command set of a least-privilege user): a short
-- batch saw everything due, a full one counts what is still due, up to the limit.
local left = 0
if #ids == tonumber(ARGV[1]) then
  left = #redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
end
return {#ids, removed, unhandled, rechecked, left}
