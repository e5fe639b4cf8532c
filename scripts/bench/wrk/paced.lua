-- The paced run: each connection waits BENCH_PACE_MS between its requests, so the offered load
-- is fixed (connections x 1000 / pace per second, at most) and saturates nobody.
local pace_ms = tonumber(os.getenv("BENCH_PACE_MS")) or 5
function delay()
  return pace_ms
end
