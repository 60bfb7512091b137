-- wrk script of bench/bench_operators.py: GET one operator endpoint with an API key, paced to a rate.
--   wrk -t1 -cN -dS --latency -s bench/operators_load.lua http://127.0.0.1:PORT -- PATH RATE KEY
-- PATH: the path and query string; RATE: requests/s of this wrk process in total (0: as fast as it can);
-- KEY: the API key (sent as Authorization: Bearer). Request i is not sent before start + i / RATE (a
-- connection that falls behind sends at once). done() prints one JSON line that the benchmark reads.
local ffi = require("ffi")
ffi.cdef [[
  typedef long time_t;
  typedef struct timespec { time_t tv_sec; long tv_nsec; } timespec;
  int clock_gettime(int clk_id, timespec *tp);
]]
local ts = ffi.new("timespec[1]")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts[0].tv_sec) * 1000 + tonumber(ts[0].tv_nsec) / 1e6
end

local req, interval_ms, due

function init(args)
  local path, rate, key = args[1], tonumber(args[2]), args[3]
  req = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. key, ["Accept-Encoding"] = "gzip" })
  interval_ms = (rate and rate > 0) and 1000 / rate or 0
end

function request()
  return req
end

function delay()
  if interval_ms == 0 then
    return 0
  end
  -- delay() comes before each request of each connection: it takes the next slot of the schedule
  local t = now_ms()
  local slot = due or t
  due = slot + interval_ms
  if slot <= t then
    return 0
  end
  return math.floor(slot - t)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
