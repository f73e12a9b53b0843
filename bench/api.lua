-- wrk script of bench/api.sh: one kind of read per run, a random target per request.
--   API_KIND=jobs  GET /api/v1/transfers/ID, ID uniform in 1..API_JOBS
--   API_KIND=ls    GET /api/v1/catalog/ls?path=API_DIR&after=NAME&limit=100, NAME a random entry of the directory
--   API_KIND=stat  GET /api/v1/catalog/stat?path=API_DIR/NAME, NAME a random entry
-- API_DIR is URL-encoded already; the directory's entries are m00000000.mol2 .. (API_ENTRIES - 1).
-- API_TOKEN: the bearer token. API_OUT: done() writes the run's figures there as TSV
-- ("requests", "duration_us", "non2xx", "socket_errors", then one "h<TAB>LATENCY_US<TAB>COUNT"
-- line per distinct latency, so that runs can be merged into exact percentiles).

local kind, jobs, dir, entries

local thread_no = 0
function setup(thread)
  thread_no = thread_no + 1
  thread:set("seed", thread_no * 7919 + os.time())
end

function init(args)
  kind = os.getenv("API_KIND")
  jobs = tonumber(os.getenv("API_JOBS"))
  dir = os.getenv("API_DIR")
  entries = tonumber(os.getenv("API_ENTRIES"))
  math.randomseed(seed)
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("API_TOKEN")
end

function request()
  local path
  if kind == "jobs" then
    path = "/api/v1/transfers/" .. math.random(1, jobs)
  elseif kind == "ls" then
    path = string.format("/api/v1/catalog/ls?path=%s&after=m%08d.mol2&limit=100", dir, math.random(0, entries - 1))
  else
    path = string.format("/api/v1/catalog/stat?path=%s%%2Fm%08d.mol2", dir, math.random(0, entries - 1))
  end
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local f = assert(io.open(os.getenv("API_OUT"), "w"))
  local e = summary.errors
  f:write(string.format("requests\t%d\nduration_us\t%d\nnon2xx\t%d\nsocket_errors\t%d\n", summary.requests, summary.duration,
                        e.status, e.connect + e.read + e.write + e.timeout))
  for i = 1, #latency do
    local v, c = latency(i)
    f:write(string.format("h\t%d\t%d\n", v, c))
  end
  f:close()
end
