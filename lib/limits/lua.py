"""The scripts Redis runs for the limits (lib/limits/counters.py): each decides atomically, on the server's own clock.

Keys, all under one workspace's hash tag (one slot): KEYS[1] the rate log (a sorted set of admitted creates,
scored by when, ms), KEYS[2] the pending set (upload ids scored by expires_at), KEYS[3] the mark of its last
rebuild from Firestore (the store's epoch then; it expires after REBUILD_SECONDS), KEYS[4] the last
minute's releases.

Why scripts of our own, not a rate-limiting library: `limits` (https://pypi.org/project/limits/, the
well-kept one, with Redis storage) counts hits per key in a fixed, moving or sliding window. A create is
decided against two things at once, the window and the set of uploads still pending (each held by id,
freed when it settles or at its expires_at), and that set is rebuilt from Firestore; no strategy there
holds such a set, so one atomic script per decision is ours.
"""

from __future__ import annotations

WINDOW_SECONDS = 60
# A rebuild's mark lasts this long, so each active workspace's count is also rebuilt at least this often:
# drift no epoch catches (releases lost by an instance that died before the store came back) lasts no longer.
REBUILD_SECONDS = 600
# A release is remembered this long (KEYS[4]): longer than a rebuild takes to read the records it then writes.
RELEASED_SECONDS = 60

# Both scripts: KEYS are the rate log and the pending set. They start on the server's clock, drop
# what left the window and what expired, and count both; `frees(rank)` is the ms until the
# member at `rank` (oldest first) leaves the window.
PRELUDE = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = {WINDOW_SECONDS * 1000}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local used = redis.call('ZCARD', KEYS[1])
local pending = redis.call('ZCARD', KEYS[2])
local function frees(rank)
  local e = redis.call('ZRANGE', KEYS[1], rank, rank, 'WITHSCORES')
  if #e == 0 then return 0 end
  return tonumber(e[2]) + window - now
end
"""
# KEYS[3]: the store's epoch when the pending set was last rebuilt from Firestore. ARGV: member, creates per
# minute, max pending, expires_at (ms), the store's epoch now.
# Returns {admitted (1/0; -1: not rebuilt in this epoch, rebuild first), refused-by ("", "rate", "quota"),
#          creates in the window, pending, ms until the rate log frees a create, ms until the first pending
#          upload expires}.
ADMIT = (
    PRELUDE
    + """
local synced = redis.call('GET', KEYS[3])
if not synced or tonumber(synced) < tonumber(ARGV[5]) then
  return {-1, 'unsynced', used, pending, 0, 0}
end
local limit, max_pending = tonumber(ARGV[2]), tonumber(ARGV[3])
local function first_expiry()
  local e = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #e == 0 then return 0 end
  return tonumber(e[2]) - now
end
if used >= limit then
  return {0, 'rate', used, pending, frees(used - limit), first_expiry()}
end
if pending >= max_pending then
  return {0, 'quota', used, pending, frees(0), first_expiry()}
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], window)
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], tonumber(last[2]) + 1000)
return {1, '', used + 1, pending + 1, frees(0), first_expiry()}
"""
)
# A release: the member leaves the pending set, and is noted in KEYS[4] for RELEASED_SECONDS, so that a
# rebuild that read its record while it was still pending does not put it back. ARGV: the member. Returns 1
# if it was there.
RELEASE = (
    PRELUDE
    + f"""
local removed = redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - {RELEASED_SECONDS * 1000})
redis.call('PEXPIRE', KEYS[4], {RELEASED_SECONDS * 1000})
return removed
"""
)
# Returns {creates in the window, pending, ms until the rate log frees one (0: it is empty)}.
USAGE = (
    PRELUDE
    + """
return {used, pending, frees(0)}
"""
)
# The pending set rebuilt from Firestore's records. ARGV: the store's epoch; ms a create may still be writing
# its record; how many ids follow that are settled (recorded, not pending: dropped); those ids; then (upload
# id, expires_at ms) pairs: the workspace's pending records. Any other member they do not name is dropped
# unless the rate log admitted it within that time (its record may not be written yet); then each record
# still before its expiry is added, and the epoch marked. Returns the pending count.
SYNC = (
    PRELUDE
    + f"""
local epoch, in_flight, settled = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, 3 + settled do redis.call('ZREM', KEYS[2], ARGV[i]) end
local records = {{}}
for i = 4 + settled, #ARGV, 2 do records[ARGV[i]] = tonumber(ARGV[i + 1]) end
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if records[member] == nil then
    local admitted = redis.call('ZSCORE', KEYS[1], member)
    if not admitted or tonumber(admitted) < now - in_flight then redis.call('ZREM', KEYS[2], member) end
  end
end
for member, expires in pairs(records) do
  -- One released since its record was read (it settled meanwhile) stays out.
  if expires > now and not redis.call('ZSCORE', KEYS[4], member) then redis.call('ZADD', KEYS[2], expires, member) end
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if #last > 0 then redis.call('PEXPIREAT', KEYS[2], tonumber(last[2]) + 1000) end
redis.call('SET', KEYS[3], epoch, 'EX', {REBUILD_SECONDS})
return redis.call('ZCARD', KEYS[2])
"""
)
