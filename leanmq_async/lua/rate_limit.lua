-- rate_limit.lua: grant one handler start under a rate limit (a sliding log of starts).
--
-- KEYS    [1] log           list: the start times granted (ms, Redis clock), oldest first,
--                           at most ``limit`` of them (the limiter's key: keys.py)
-- ARGV    [1] limit         starts allowed in any window of ``per`` ms
--         [2] per           the window, ms
--         [3] clock shift   ms (0 in production)
--         [4] slack         ms added to the spacing: a start that begins up to this late
--                           after its grant still keeps every window within ``limit``
-- REPLY   integer: the start granted, ms on the Redis clock. Negated (< 0) when it is now:
--         start at once. Positive when it is later: the caller defers the message to it
--         (lua/defer.lua), and the message holds that reservation: it starts then
--         without asking again.
-- ATOMIC  The grant t is the earliest time >= now, >= the latest grant, and >= the
--         ``limit``-th latest grant + ``per`` + ``slack``: grants never decrease and any
--         ``limit`` + 1 of them span at least ``per`` + ``slack``, so every window
--         [a, a + per) holds at most ``limit`` starts, each begun between its grant and
--         ``slack`` after it (strict, no burst above the limit). t is appended, the log
--         trimmed to its last ``limit`` grants and set to expire ``per`` + ``slack`` ms
--         after t.
--         Every call is granted (now or later): no call is denied, none is wasted.
-- ERRORS  'WRONGTYPE ...' before anything is written.
local bad = check_types(KEYS, {'list'})
if bad then return redis.error_reply(bad) end
local log, limit = KEYS[1], tonumber(ARGV[1])
local per = tonumber(ARGV[2]) + tonumber(ARGV[4])
local now = now_ms(ARGV[3])
local t = now
local n = redis.call('LLEN', log)
if n > 0 then
  t = math.max(t, tonumber(redis.call('LINDEX', log, -1)))
  if n >= limit then
    t = math.max(t, tonumber(redis.call('LINDEX', log, -limit)) + per)
  end
end
redis.call('RPUSH', log, t)
if n + 1 > limit then redis.call('LTRIM', log, -limit, -1) end
redis.call('PEXPIRE', log, t - now + per)
if t <= now then return -t end
return t
