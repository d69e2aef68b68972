-- wrk script of `cargo xtask bench`: its variables are the fields of `Wrk` in xtask/src/load.rs.
local mode = os.getenv("BENCH_INPUTS") or "same"
local field = os.getenv("BENCH_FIELD") or "data"
local run = os.getenv("BENCH_RUN") or "0"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format('{"%s":"hello, shout-proxy bench %s-1-000000000"}', field, run)
counter = 0
if mode == "unique" then
   function request()
      counter = counter + 1
      return wrk.format(nil, nil, nil, string.format('{"%s":"hello, shout-proxy bench %s-1-%09d"}', field, run, counter))
   end
end
-- errors: non-2xx answers plus socket errors (connect, read, write, timeout).
function done(summary, latency, requests)
   local e, ms = summary.errors, function(q) return latency:percentile(q) / 1e3 end
   io.write(string.format(
      'BENCH_JSON {"rps":%f,"duration_us":%d,"errors":%d,"p50_ms":%.3f,"p99_ms":%.3f,"p99_9_ms":%.3f}\n',
      summary.requests / math.max(summary.duration, 1) * 1e6, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
      ms(50), ms(99), ms(99.9)))
end
