-- What sync.lua and modify.lua share, put before each of them: how a
-- channel's hash is created, read and checked, and the one rule for a
-- store that is behind what an instance saw.

-- Deletes every history field of `key` (after a new epoch), a thousand at
-- a time.
local function drop_history(key)
  local old = {}
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if string.sub(field, 1, 1) == 'h' then
      old[#old + 1] = field
      if #old == 1000 then
        redis.call('HDEL', key, unpack(old))
        old = {}
      end
    end
  end
  if #old > 0 then redis.call('HDEL', key, unpack(old)) end
end

-- Starts the channel at `key` again at version 0 of `epoch`, holding
-- `value`: for a state never created, expired, or lost (a restart without
-- persistence, an eviction), so that no client waits on the lost sequence.
local function create(key, epoch, value)
  drop_history(key)
  redis.call('HSET', key, 'epoch', epoch, 'version', '0', 'value', value)
end

-- The stored version as a number, or nil with the error to answer if it is
-- not a whole number of at least 0.
local function checked_version(version)
  local n = tonumber(version)
  if not n or n < 0 or n ~= math.floor(n) then
    return nil, redis.error_reply('LONGPOLL_CORRUPT channel state has version ' .. tostring(version))
  end
  return n
end

-- Whether Redis, at version `n` of `epoch`, is behind what the caller saw
-- (`held_epoch`, `held_version`, and `retired`, the epochs it left, space-
-- separated between spaces): restored from an older snapshot, or a
-- failover to a lagging replica. Versions must never go back within an
-- epoch, and the versions between would come again with other values, so
-- the sequence must move to a new epoch.
local function behind(epoch, n, held_epoch, held_version, retired)
  if epoch == held_epoch then return n < held_version end
  return string.find(retired, ' ' .. epoch .. ' ', 1, true) ~= nil
end

