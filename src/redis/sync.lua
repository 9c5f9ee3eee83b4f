-- Reads a channel's state for an instance that joins it, comes back after
-- losing its subscription, or checks it; creates the state if it is missing
-- (when asked to) and starts a new epoch if Redis is behind what the caller
-- saw.
--
-- KEYS[1]   the channel's hash: epoch, version, value, keep, and the history
--           as one field h<version> per retained version before the current
-- ARGV[1]   a fresh epoch, used if the sequence must start again
-- ARGV[2]   the initial value, used if the state is missing
-- ARGV[3]   the epoch the caller holds ('' if none)
-- ARGV[4]   the version the caller holds ('0' if none)
-- ARGV[5]   the Pub/Sub channel
-- ARGV[6]   how many updates the caller's history keeps
-- ARGV[7]   the most history entries to return
-- ARGV[8]   epochs the caller left, space-separated ('' if none)
-- ARGV[9]   the publish command: PUBLISH, or SPUBLISH on a cluster
-- ARGV[10]  '1': create a missing state; '0': a missing state is answered
--           with {} and nothing is written
-- ARGV[11]  the time to live of a created state, in ms ('0': none)
--
-- Returns {epoch, version, value, entries}: `entries` are the history
-- entries ("<version> <value>") after the caller's version if it holds the
-- current epoch, else the newest ones, at most ARGV[7] of them, oldest
-- first. Returns {} for a missing state that it did not create.
local key, channel, publish = KEYS[1], ARGV[5], ARGV[9]
local held_epoch, held_version = ARGV[3], tonumber(ARGV[4])
local want, retired = tonumber(ARGV[7]), ' ' .. ARGV[8] .. ' '

local state = redis.call('HMGET', key, 'epoch', 'version', 'value', 'keep')
local epoch, version, value = state[1], state[2], state[3] or ''
if not epoch then
  if ARGV[10] ~= '1' then return {} end
  epoch, version, value = ARGV[1], '0', ARGV[2]
  create(key, epoch, value)
  local ttl = tonumber(ARGV[11])
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  redis.call(publish, channel, epoch .. ' ' .. version .. ' ' .. value)
else
  local n, corrupt = checked_version(version)
  if not n then return corrupt end
  if behind(epoch, n, held_epoch, held_version, retired) then
    epoch = ARGV[1]
    redis.call('HSET', key, 'epoch', epoch)
    drop_history(key)
    redis.call(publish, channel, epoch .. ' ' .. version .. ' ' .. value)
  end
end

-- The history depth is the channel's: the largest any instance asked for.
local keep = tonumber(state[4]) or 1
if tonumber(ARGV[6]) > keep then
  redis.call('HSET', key, 'keep', ARGV[6])
end

local entries = {}
local n = tonumber(version)
local first = n - want
if epoch == held_epoch then first = math.max(first, held_version + 1) end
first = math.max(first, 0)
while first < n do
  local last = math.min(first + 999, n - 1)
  local fields = {}
  for v = first, last do fields[#fields + 1] = string.format('h%d', v) end
  local values = redis.call('HMGET', key, unpack(fields))
  for i = 1, #fields do
    if values[i] then
      entries[#entries + 1] = string.format('%d ', first + i - 1) .. values[i]
    end
  end
  first = last + 1
end
return {epoch, version, value, entries}
