-- wrk script for the shout-proxy benchmark (bench/run.py drives it).
--
-- Environment (read at load time, because wrk decides per script whether requests are static):
--   BENCH_INPUTS  same   every request sends one fixed body (wrk's static request, cheapest)
--                 unique every request sends a new input: a per-thread counter, so no input
--                        repeats within a run or across threads
--   BENCH_FIELD   JSON field to send: data (shout-proxy, reference) or INPUT (the fake upstream)
--   BENCH_RUN     run id put into every unique input, so inputs differ between runs too
--   BENCH_LIMIT   when set, stop after this many responses in total, split over BENCH_THREADS
--                 threads (pass wrk's -t there too)
--
-- At the end it prints one line `BENCH_JSON {...}` with counts, errors and latency percentiles
-- in microseconds, which run.py parses (wrk's own text output has no p99.9).

local mode = os.getenv("BENCH_INPUTS") or "same"
local field = os.getenv("BENCH_FIELD") or "data"
local run = os.getenv("BENCH_RUN") or "0"
local limit = tonumber(os.getenv("BENCH_LIMIT") or "")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- Same length class as the unique inputs below.
wrk.body = string.format('{"%s":"hello, shout-proxy bench %s-1-000000000"}', field, run)

local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("tid", thread_count)
end

function init(args)
   counter = 0
   received = 0
   per_thread_limit = nil
   if limit then
      -- Every thread stops after its share (rounded up, so the total is at least the limit).
      per_thread_limit = math.ceil(limit / nthreads)
   end
end

if mode == "unique" then
   function request()
      counter = counter + 1
      local body = string.format('{"%s":"hello, shout-proxy bench %s-%d-%09d"}',
                                 field, run, tid, counter)
      return wrk.format(nil, nil, nil, body)
   end
end

if limit then
   function response(status, headers, body)
      received = received + 1
      if received >= per_thread_limit then
         wrk.thread:stop()
      end
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   local p = function(q) return latency:percentile(q) end
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
      '"p50":%d,"p90":%d,"p99":%d,"p99_9":%d,"p99_99":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.stdev, latency.max,
      p(50), p(90), p(99), p(99.9), p(99.99)))
end
