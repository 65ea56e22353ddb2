-- count_after.lua: count a stream's entries after an id, inside Redis, up to a cap.
--
-- KEYS    [1] stream        the stream
-- ARGV    [1] after         a stream id: entries with a larger id are counted
--         [2] cap           the most entries counted
-- REPLY   integer: the number of entries after ``after``, at most ``cap``.
-- ATOMIC  Read only. Entries are paged (1,000 per XRANGE) inside Redis and never sent
--         back: used when XINFO reports no lag (entries deleted after a group's
--         last-delivered id) to count what the group has still to read.
-- ERRORS  WRONGTYPE when [1] is not a stream.
local n, start, cap = 0, '(' .. ARGV[1], tonumber(ARGV[2])
while n < cap do
  local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(1000, cap - n))
  if #page == 0 then break end
  n = n + #page
  start = '(' .. page[#page][1]
end
return n
