-- cxrel shared rate budget: GCRA with reservations at a CUBIC-adapted rate, all state in one hash
-- (KEYS[1]). The same arithmetic as src/store/cubic.rs and src/store/pacer.rs, on the server.
-- Times are microseconds of the Redis server's clock (TIME): client clocks are never compared,
-- only durations measured by one client (the age of a throttled request) are passed in.
--
-- Fields: tat, pause_until, generation (bumped by every cut and closed probe), cut_at (0 = no 429
-- yet), w_max, k (seconds), traffic_start, successes, refused, ep_start, ep_successes, ep_refused,
-- ep_signals, cut_ok (successes of requests sent after the cut), closed_run, probe, tat_rate (the rate
-- tat's lead over now was taken at; 0 = unknown),
-- (us between probes while closed, 0 = open), closed_since, last_closed, first_cut, t_newest and the trailing
-- second's slots t_adm / t_ref (20 comma-separated counts of 50 ms each), w_max_at_cut and
-- admitted_at_cut (the last cut's w_max and what the server admitted per second before it), penalty
-- (when the last penalty box reopened; 0 = none).
--
-- ARGV[1] = op: "acquire" | "throttle"
-- ARGV[2] = max_rate (0 = not configured: slow start), ARGV[3] = burst, ARGV[4] = ttl_ms,
-- ARGV[5] = successes to add (non-429 answers since this client's last call),
-- ARGV[6] = 429s to add (since this client's last call, including this one for throttle),
-- ARGV[7..17] = beta, recover_us, min_rate, estimate_successes, estimate_refused, escalate_after,
--               cool_min_us, cool_max_us, start_rate, doubling_us, horizon_us
-- ARGV[18] = closed_probe_us, ARGV[19] = the generation the caller's after-cut successes belong
--            to, ARGV[20] = successes of requests the caller sent after it saw that generation
-- throttle: ARGV[21] = age_us (how long ago the throttled request was sent),
--           ARGV[22] = retry_after_us (-1 = none)
--
-- Replies are integers (Lua numbers are truncated): {wait_us, rate_milli, generation, reserved 0|1}
-- for acquire (not reserved: ask again after wait_us); {cut 0|1, rate_milli, w_max_milli, pause_left_us (-1 = none), generation} for throttle
-- (cut 0 with a new generation: the server is closed and requests go as probes).
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
local closed_probe = tonumber(ARGV[18])
local after_gen = tonumber(ARGV[19])
local after_count = tonumber(ARGV[20])
local SLOT = 50000
local SLOTS = 20
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local names = {'tat', 'pause_until', 'generation', 'cut_at', 'w_max', 'k', 'traffic_start',
  'successes', 'refused', 'ep_start', 'ep_successes', 'ep_refused', 'ep_signals', 'cut_ok',
  'closed_run', 'probe', 'last_closed', 'first_cut', 't_newest', 'closed_since', 'tat_rate',
  'w_max_at_cut', 'admitted_at_cut', 'penalty'}
local raw = redis.call('HMGET', key, unpack(names))
local s = {}
for i, name in ipairs(names) do s[name] = tonumber(raw[i]) or 0 end
local slots_raw = redis.call('HMGET', key, 't_adm', 't_ref')
local function slots(text)
  local out = {}
  for n in string.gmatch(text or '', '[^,]+') do out[#out + 1] = tonumber(n) or 0 end
  for i = #out + 1, SLOTS do out[i] = 0 end
  return out
end
local adm, ref = slots(slots_raw[1]), slots(slots_raw[2])
s.successes = s.successes + added
s.refused = s.refused + added_refused
if s.traffic_start == 0 then s.traffic_start = now end
-- A success of a request sent after the cut: the server is open (see cubic.rs, "Closed"); after
-- a closed run of over a second, a penalty box reopened (see after_penalty below).
local reopened = false
if after_count > 0 and after_gen == s.generation then
  reopened = s.closed_run > 0 and now - s.closed_since > 1000000
  s.cut_ok = s.cut_ok + after_count
  s.closed_run = 0
  s.probe = 0
end

-- The trailing second (trailing.rs): slots of 50 ms from traffic_start, answers counted when
-- reported.
local function advance(at)
  local index = math.floor((at - s.traffic_start) / SLOT)
  if index > s.t_newest then
    local passed = math.min(index - s.t_newest, SLOTS)
    for j = 1, passed do
      local i = (s.t_newest + j) % SLOTS + 1
      adm[i] = 0
      ref[i] = 0
    end
    s.t_newest = index
  end
  return s.t_newest % SLOTS + 1
end
local current_slot = advance(now)
adm[current_slot] = adm[current_slot] + added
ref[current_slot] = ref[current_slot] + added_refused
local function trailing()
  local a, r = 0, 0
  for i = 1, SLOTS do
    a = a + adm[i]
    r = r + ref[i]
  end
  local first = math.max(s.t_newest - (SLOTS - 1), 0)
  return a, r, now - (s.traffic_start + first * SLOT)
end
-- Answers in the last n slots (the current one included): what came back lately.
local function recent_answers(n)
  local total = 0
  for k = 0, n - 1 do
    local idx = s.t_newest - k
    if idx >= 0 then
      local i = idx % SLOTS + 1
      total = total + adm[i] + ref[i]
    end
  end
  return total
end
local DEMAND_SLOTS = 4
local function admitted_last_second()
  local a, _, span = trailing()
  return a / math.max(span / 1000000, 1)
end

local scale = (1 - beta) / math.max(recover, 0.001) ^ 3
-- After a penalty box (see cubic.rs, after_penalty and PENALTY_*): resume below the lower of the
-- last w_max and what the server admitted before it closed; when it closed near what the server
-- admitted, probe past it slowly for 60 s.
local PENALTY_STEP = 0.93
local PENALTY_MEMORY = 60000000
local PENALTY_SLOWDOWN = 8
local PENALTY_NEAR = 0.8
if reopened then
  local known = s.admitted_at_cut >= estimate_successes
  local w = s.w_max_at_cut
  if known then w = math.min(w, s.admitted_at_cut) end
  w = math.max(w * PENALTY_STEP, min_rate)
  local rate = math.max(w * beta, min_rate)
  s.k = (math.max(1 - rate / w, 0) / scale) ^ (1 / 3)
  s.w_max = w
  s.cut_at = now
  if known and s.admitted_at_cut >= PENALTY_NEAR * s.w_max_at_cut then
    s.penalty = now
  else
    s.penalty = 0
  end
end
local function rate_at(at)
  if s.cut_at == 0 then
    if max_rate > 0 then return max_rate end
    local d = math.min((at - s.traffic_start) / math.max(doubling, 1000), 30)
    -- At most twice what came back lately (see cubic.rs, slow_start).
    local answered = recent_answers(DEMAND_SLOTS) * 1000000 / (DEMAND_SLOTS * SLOT)
    return math.min(start_rate * 2 ^ d, math.max(2 * answered, start_rate))
  end
  local dt = (at - s.cut_at) / 1000000
  -- Past w_max the probe climbs a quarter as steeply (slower still after a penalty box).
  local sc = scale
  if dt > s.k then
    sc = scale / 4
    if s.penalty > 0 and at - s.penalty < PENALTY_MEMORY then sc = sc / PENALTY_SLOWDOWN ^ 3 end
  end
  local r = s.w_max * (1 + sc * (dt - s.k) ^ 3)
  if max_rate > 0 and r > max_rate then r = max_rate end
  if r < min_rate then r = min_rate end
  if s.probe > 0 and r > 1000000 / s.probe then r = 1000000 / s.probe end
  return r
end
local function milli(r) return math.floor(math.min(r, 1e9) * 1000 + 0.5) end
local function save()
  local args = {}
  for _, name in ipairs(names) do
    args[#args + 1] = name
    args[#args + 1] = string.format('%.17g', s[name])
  end
  args[#args + 1] = 't_adm'
  args[#args + 1] = table.concat(adm, ',')
  args[#args + 1] = 't_ref'
  args[#args + 1] = table.concat(ref, ',')
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, ttl)
end

if op == 'acquire' then
  local rate = rate_at(now)
  -- tat's lead is a number of requests at tat_rate; at another rate it takes another time
  -- (see pacer.rs, rescale): an empty bucket at a 1 rps probe must not hold a risen rate.
  if s.tat_rate > 0 and s.tat_rate ~= rate and s.tat > now then
    s.tat = now + math.min((s.tat - now) * s.tat_rate / rate, 3600000000)
  end
  s.tat_rate = rate
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
  local sent = now - tonumber(ARGV[21])
  local retry_after = tonumber(ARGV[22])
  if s.cut_at > 0 and sent < s.cut_at then
    -- Sent before the last cut (by any replica): part of a signal already taken.
    save()
    return {0, milli(rate_at(now)), milli(s.w_max), -1, s.generation}
  end
  if s.cut_at > 0 and s.cut_ok == 0 then
    -- Nothing sent since the cut was admitted: closed (a window used up). Probe, do not cut.
    -- Sent before the last probe interval was set: part of it (a closed run from before the cut
    -- is older than every request sent since).
    if sent < s.last_closed then
      save()
      return {0, milli(rate_at(now)), milli(s.w_max), -1, s.generation}
    end
    if s.closed_run == 0 then s.closed_since = now end
    local doubled = closed_probe * 2 ^ math.min(s.closed_run, 16)
    -- Within a second a window opens again: probe often, whatever Retry-After says. Closed for
    -- longer it is a penalty box: wait as Retry-After says (or twice as long each time).
    local interval = math.min(doubled, closed_probe * 16)
    if now - s.closed_since >= 1000000 then
      interval = doubled
      if retry_after >= 0 then interval = retry_after end
    end
    s.probe = math.max(math.min(interval, cool_max), 1000)
    s.closed_run = s.closed_run + 1
    s.last_closed = now
    if s.closed_run == 3 and s.first_cut == s.cut_at then
      -- A window, not an empty bucket: rebase the first cut's curve on what it admitted.
      local floor = admitted_last_second()
      if floor >= estimate_successes and floor < s.w_max then
        local rebased = math.max(floor * beta, min_rate)
        s.k = (math.max(1 - rebased / floor, 0) / scale) ^ (1 / 3)
        s.w_max = floor
        s.cut_at = now
      end
    end
    s.generation = s.generation + 1
    local probe_rate = rate_at(now)
    s.tat = now + burst * 1000000 / probe_rate
    s.tat_rate = probe_rate
    save()
    return {0, milli(probe_rate), milli(s.w_max), -1, s.generation}
  end
  local current = rate_at(now)
  if s.cut_at > 0 and (now - s.cut_at) / 1000000 < recover and current < 0.99 * s.w_max then
    s.ep_signals = s.ep_signals + 1
  else
    s.ep_start = now
    s.ep_successes = s.successes
    s.ep_refused = s.refused
    s.ep_signals = 1
  end
  -- 429s again at about the rate they came at last time: the limit sits a little lower.
  -- From 1% below to 2.5% above (AGAIN_ABOVE in cubic.rs).
  local again_hit = s.cut_at > 0 and current >= 0.99 * s.w_max and current < 1.025 * s.w_max
  local again = current
  if again_hit then again = current * 0.99 end
  local estimate = -1
  local span = now - s.ep_start
  local admitted = s.successes - s.ep_successes
  local refused = s.refused - s.ep_refused
  if s.ep_signals >= 2 and admitted >= estimate_successes and span >= 1000
      and refused >= estimate_refused * admitted then
    -- The bucket was empty at the episode's first 429 and kept refusing since: what it admitted
    -- since then is its rate.
    estimate = (admitted + 1) / (span / 1000000)
  end
  local t_adm, t_ref, t_span = trailing()
  local closed_recently = s.last_closed > 0 and now - s.last_closed <= 3000000
  local steady = s.traffic_start
  if max_rate <= 0 then steady = s.first_cut end
  if steady > 0 and now - steady >= 1000000 and t_adm >= estimate_successes then
    if closed_recently or t_ref >= estimate_refused * t_adm then
      estimate = math.max(estimate, (t_adm + 1) / math.max(t_span / 1000000, 0.001))
    end
  end
  -- Never below what a window admitted in the last second (closed within the last three: see
  -- CLOSED_RECENT in cubic.rs).
  local floor = 0
  if closed_recently then floor = admitted_last_second() end
  local n = math.min(s.ep_signals, 32)
  local w_max = math.max(again, floor)
  local estimated = false
  if estimate >= 0 then
    estimate = math.max(estimate, floor)
    if estimate < current then
      w_max = estimate
      n = 1
      estimated = true
    end
  end
  w_max = math.max(w_max, min_rate)
  -- A lone 429 back at the last w_max: a small step down (REPEAT_BETA in cubic.rs).
  local depth = beta ^ n
  if again_hit and not estimated and n == 1 then depth = 0.97 end
  local rate = math.max(w_max * depth, beta * floor, min_rate)
  s.k = (math.max(1 - rate / w_max, 0) / scale) ^ (1 / 3)
  s.w_max = w_max
  s.w_max_at_cut = w_max
  s.admitted_at_cut = t_adm / math.max(t_span / 1000000, 0.05)
  s.cut_at = now
  if s.first_cut == 0 then s.first_cut = now end
  s.cut_ok = 0
  s.closed_run = 0
  s.probe = 0
  s.generation = s.generation + 1
  -- Reservations at the old rate are void; the new rate starts without burst.
  s.tat = now + burst * 1000000 / rate
  s.tat_rate = rate
  local pause_left = -1
  -- A server that admitted plenty in the last second is no penalty box: no pause.
  if floor < estimate_successes and (s.ep_signals >= escalate_after or rate <= min_rate) then
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
