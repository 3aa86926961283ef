-- cxrel shared rate budget: GCRA with reservations at a CUBIC-adapted rate, all state in one hash
-- (KEYS[1]). The same arithmetic as src/store/cubic.rs and src/store/pacer.rs, on the server.
-- Times are microseconds of the Redis server's clock (TIME): client clocks are never compared,
-- only durations measured by one client (the age of a throttled request) are passed in.
--
-- Fields: tat, pause_until, generation (bumped by every cut), cut_at (0 = no 429 yet), w_max, k
-- (seconds), traffic_start, successes, refused, ep_start, ep_successes, ep_refused, ep_signals.
--
-- ARGV[1] = op: "acquire" | "throttle"
-- ARGV[2] = max_rate (0 = not configured: slow start), ARGV[3] = burst, ARGV[4] = ttl_ms,
-- ARGV[5] = successes to add (non-429 answers since this client's last call),
-- ARGV[6] = 429s to add (since this client's last call, including this one for throttle),
-- ARGV[7..17] = beta, recover_us, min_rate, estimate_successes, estimate_refused, escalate_after,
--               cool_min_us, cool_max_us, start_rate, doubling_us, horizon_us
-- throttle: ARGV[18] = age_us (how long ago the throttled request was sent),
--           ARGV[19] = retry_after_us (-1 = none)
--
-- Replies are integers (Lua numbers are truncated): {wait_us, rate_milli, generation, reserved 0|1}
-- for acquire (not reserved: ask again after wait_us); {cut 0|1, rate_milli, w_max_milli, pause_left_us (-1 = none), generation} for throttle.
local key = KEYS[1]
local op = ARGV[1]
local max_rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local added = tonumber(ARGV[5])
local added_refused = tonumber(ARGV[6])
local beta = tonumber(ARGV[7])
local recover = tonumber(ARGV[8]) / 1000000
local min_rate = tonumber(ARGV[9])
local estimate_successes = tonumber(ARGV[10])
local estimate_refused = tonumber(ARGV[11])
local escalate_after = tonumber(ARGV[12])
local cool_min = tonumber(ARGV[13])
local cool_max = tonumber(ARGV[14])
local start_rate = tonumber(ARGV[15])
local doubling = tonumber(ARGV[16])
local horizon = tonumber(ARGV[17])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local names = {'tat', 'pause_until', 'generation', 'cut_at', 'w_max', 'k', 'traffic_start',
  'successes', 'refused', 'ep_start', 'ep_successes', 'ep_refused', 'ep_signals'}
local raw = redis.call('HMGET', key, unpack(names))
local s = {}
for i, name in ipairs(names) do s[name] = tonumber(raw[i]) or 0 end
s.successes = s.successes + added
s.refused = s.refused + added_refused
if s.traffic_start == 0 then s.traffic_start = now end

local scale = (1 - beta) / math.max(recover, 0.001) ^ 3
local function rate_at(at)
  if s.cut_at == 0 then
    if max_rate > 0 then return max_rate end
    local d = math.min((at - s.traffic_start) / math.max(doubling, 1000), 30)
    return start_rate * 2 ^ d
  end
  local dt = (at - s.cut_at) / 1000000
  local r = s.w_max * (1 + scale * (dt - s.k) ^ 3)
  if max_rate > 0 and r > max_rate then r = max_rate end
  if r < min_rate then r = min_rate end
  return r
end
local function milli(r) return math.floor(math.min(r, 1e9) * 1000 + 0.5) end
local function save()
  local args = {}
  for _, name in ipairs(names) do
    args[#args + 1] = name
    args[#args + 1] = string.format('%.17g', s[name])
  end
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, ttl)
end

if op == 'acquire' then
  local rate = rate_at(now)
  local interval = 1000000 / rate
  local allowance = burst * interval
  local start = math.max(now, s.pause_until)
  -- Reservations reach at most the horizon ahead (see pacer.rs): beyond it, come back later.
  local reach = now + horizon + allowance
  if s.tat + interval > reach then
    save()
    return {math.floor(s.tat + interval - reach), milli(rate), s.generation, 0}
  end
  s.tat = math.max(s.tat, start) + interval
  local allow_at = math.max(s.tat - allowance, start)
  save()
  return {math.floor(allow_at - now), milli(rate), s.generation, 1}
end

if op == 'throttle' then
  local sent = now - tonumber(ARGV[18])
  local retry_after = tonumber(ARGV[19])
  if s.cut_at > 0 and sent < s.cut_at then
    -- Sent before the last cut (by any replica): part of a signal already taken.
    save()
    return {0, milli(rate_at(now)), milli(s.w_max), -1, s.generation}
  end
  local current = rate_at(now)
  if s.cut_at > 0 and (now - s.cut_at) / 1000000 < recover then
    s.ep_signals = s.ep_signals + 1
  else
    s.ep_start = now
    s.ep_successes = s.successes
    s.ep_refused = s.refused
    s.ep_signals = 1
  end
  local w_max = current
  local n = math.min(s.ep_signals, 32)
  local span = now - s.ep_start
  local admitted = s.successes - s.ep_successes
  local refused = s.refused - s.ep_refused
  if s.ep_signals >= 2 and admitted >= estimate_successes and span >= 1000
      and refused >= estimate_refused * admitted then
    -- The bucket was empty at the episode's first 429 and kept refusing since: what it admitted
    -- since then is its rate.
    local estimate = (admitted + 1) / (span / 1000000)
    if estimate < current then
      w_max = estimate
      n = 1
    end
  end
  w_max = math.max(w_max, min_rate)
  local rate = math.max(w_max * beta ^ n, min_rate)
  s.k = (math.max(1 - rate / w_max, 0) / scale) ^ (1 / 3)
  s.w_max = w_max
  s.cut_at = now
  s.generation = s.generation + 1
  -- Reservations at the old rate are void; the new rate starts without burst.
  s.tat = now + burst * 1000000 / rate
  local pause_left = -1
  if s.ep_signals >= escalate_after or rate <= min_rate then
    local extra = math.min(math.max(s.ep_signals - escalate_after, 0), 16)
    local pause = math.min(cool_min * 2 ^ extra, cool_max)
    if retry_after >= 0 then pause = math.min(retry_after, cool_max) end
    s.pause_until = math.max(s.pause_until, now + pause)
    pause_left = s.pause_until - now
  end
  save()
  return {1, milli(rate), milli(w_max), math.floor(pause_left), s.generation}
end

return redis.error_reply('cxrel budget: unknown op')
