-- wrk script: POSTs the JSON bodies of $WRK_BODIES (one per line, cycled) to $WRK_PATH
-- (default /v1/chat/completions) with $WRK_AUTH as the bearer key when set; prints one JSON
-- summary line at the end (non-2xx responses count as errors).
local bodies, i = {}, 0
for line in io.lines(os.getenv("WRK_BODIES")) do bodies[#bodies + 1] = line end
local path = os.getenv("WRK_PATH") or "/v1/chat/completions"
local headers = { ["Content-Type"] = "application/json" }
local auth = os.getenv("WRK_AUTH")
if auth and auth ~= "" then headers["Authorization"] = "Bearer " .. auth end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", path, headers, bodies[i])
end
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format(
    '{"requests":%d,"duration_s":%.3f,"rps":%.1f,"errors":%d,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f}\n',
    s.requests, s.duration / 1e6, s.requests / (s.duration / 1e6),
    e.connect + e.read + e.write + e.status + e.timeout,
    lat:percentile(50) / 1e3, lat:percentile(90) / 1e3, lat:percentile(99) / 1e3, lat.max / 1e3))
end
