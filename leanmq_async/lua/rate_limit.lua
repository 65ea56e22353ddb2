-- rate_limit.lua: grant handler starts under a rate limit (a sliding log of starts).
--
-- KEYS    [1..] logs        lists: the start times granted (ms, Redis clock), oldest
--                           first, at most ``limit`` each: one per limiter key (keys.py)
-- ARGV    [1] limit         starts allowed in any window of ``per`` ms
--         [2] per           the window, ms
--         [3] clock shift   ms (0 in production)
--         [4] slack         ms added to the spacing: a start that begins up to this late
--                           after its grant still keeps every window within ``limit``
--         [5..] counts      starts wanted from each log, in KEYS order
-- REPLY   array of integers: the starts granted, ms on the Redis clock, ``counts[i]`` of
--         them for KEYS[i], in order. Negated (< 0) when it is now: start at once.
--         Positive when it is later: the caller defers that message to it
--         (lua/defer.lua), and the message holds that reservation: it starts then
--         without asking again.
-- ATOMIC  Each grant t is the earliest time >= now, >= the log's latest grant, and >=
--         its ``limit``-th latest grant + ``per`` + ``slack``: grants never decrease and
--         any ``limit`` + 1 of them span at least ``per`` + ``slack``, so every window
--         [a, a + per) holds at most ``limit`` starts, each begun between its grant and
--         ``slack`` after it (strict, no burst above the limit). Each t is appended, the
--         log trimmed to its last ``limit`` grants and set to expire ``per`` + ``slack``
--         ms after its latest. Every start asked for is granted (now or later): none is
--         denied, none wasted.
-- ERRORS  'WRONGTYPE ...' before anything is written.
local bad = check_types(KEYS, {'list'})
if bad then return redis.error_reply(bad) end
local limit = tonumber(ARGV[1])
local per = tonumber(ARGV[2]) + tonumber(ARGV[4])
local now = now_ms(ARGV[3])
local out = {}
for i, log in ipairs(KEYS) do
  local n = redis.call('LLEN', log)
  local last = nil
  if n > 0 then last = tonumber(redis.call('LINDEX', log, -1)) end
  local wanted = tonumber(ARGV[4 + i])
  -- The old grants the limit-th latest can be, for this call's grants: positions lo..hi.
  local lo, hi = math.max(0, n - limit), math.min(n - 1, n - limit + wanted - 1)
  local old = {}
  if hi >= lo then old = redis.call('LRANGE', log, lo, hi) end
  local granted = {}
  for j = 1, wanted do
    local t = now
    if last and last > t then t = last end
    local pos = n + j - 1 - limit  -- 0-based position of the limit-th latest grant
    if pos >= 0 then
      local ref
      if pos < n then ref = tonumber(old[pos - lo + 1]) else ref = granted[pos - n + 1] end
      if ref + per > t then t = ref + per end
    end
    granted[j] = t
    last = t
    if t <= now then out[#out + 1] = -t else out[#out + 1] = t end
  end
  redis.call('RPUSH', log, unpack(granted))
  if n + wanted > limit then redis.call('LTRIM', log, -limit, -1) end
  redis.call('PEXPIRE', log, last - now + per)
end
return out
