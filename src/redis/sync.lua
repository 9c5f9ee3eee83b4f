-- Reads a channel's state for an instance that joins it, comes back after
-- losing its subscription, or checks it; creates the state if it is missing
-- and starts a new epoch if Redis is behind what the caller saw.
--
-- KEYS[1]  the state hash: epoch, version, value, keep
-- KEYS[2]  the history list: "<version> <value>" entries, oldest first
-- ARGV[1]  a fresh epoch, used if the sequence must start again
-- ARGV[2]  the initial value, used if the state is missing
-- ARGV[3]  the epoch the caller holds ('' if none)
-- ARGV[4]  the version the caller holds ('0' if none)
-- ARGV[5]  the Pub/Sub channel
-- ARGV[6]  how many updates the caller's history keeps
-- ARGV[7]  the most history entries to return
-- ARGV[8]  epochs the caller left, space-separated ('' if none)
--
-- Returns {epoch, version, value, entries}: `entries` are the history
-- entries after the caller's version if it holds the current epoch, else the
-- newest ones, at most ARGV[7] of them.
local state_key, history_key, channel = KEYS[1], KEYS[2], ARGV[5]
local held_epoch, held_version = ARGV[3], tonumber(ARGV[4])
local want, retired = tonumber(ARGV[7]), ' ' .. ARGV[8] .. ' '

local state = redis.call('HMGET', state_key, 'epoch', 'version', 'value', 'keep')
local epoch, version, value = state[1], state[2], state[3] or ''
if not epoch then
  -- Never created, or lost (a restart without persistence, an eviction):
  -- start a new epoch, so that no client waits on the lost sequence.
  epoch, version, value = ARGV[1], '0', ARGV[2]
  redis.call('HSET', state_key, 'epoch', epoch, 'version', version, 'value', value)
  redis.call('DEL', history_key)
  redis.call('PUBLISH', channel, epoch .. ' ' .. version .. ' ' .. value)
else
  local n = tonumber(version)
  if not n or n < 0 or n ~= math.floor(n) then
    return redis.error_reply('LONGPOLL_CORRUPT channel state has version ' .. tostring(version))
  end
  if (epoch == held_epoch and n < held_version)
      or (epoch ~= held_epoch and string.find(retired, ' ' .. epoch .. ' ', 1, true)) then
    -- Behind what the caller already saw: restored from an older snapshot,
    -- or a failover to a lagging replica. Versions must never go back
    -- within an epoch, and the versions between would come again with
    -- other values, so the sequence moves to a new epoch.
    epoch = ARGV[1]
    redis.call('HSET', state_key, 'epoch', epoch)
    redis.call('DEL', history_key)
    redis.call('PUBLISH', channel, epoch .. ' ' .. version .. ' ' .. value)
  end
end

-- The history depth is the channel's: the largest any instance asked for.
local keep = tonumber(state[4]) or 1
if tonumber(ARGV[6]) > keep then
  redis.call('HSET', state_key, 'keep', ARGV[6])
end

local entries = {}
if want > 0 then
  local n = want
  if epoch == held_epoch then
    n = math.min(want, tonumber(version) - held_version)
  end
  if n > 0 then
    entries = redis.call('LRANGE', history_key, -n, -1)
  end
end
return {epoch, version, value, entries}
