-- A browser's GET from 1000 returning users in turn (each with its sticky
-- cookie), pre-formatted once so that wrk spends little time per request.
local requests = {}
local n = 0

function init(args)
  for user = 1, 1000 do
    requests[user] = wrk.format("GET", "/products/" .. user, {
      ["Host"] = "shop.example.com",
      ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
      ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
      ["Accept-Language"] = "en-GB,en;q=0.5",
      ["Accept-Encoding"] = "gzip, deflate, br",
      ["Cookie"] = "theme=dark; cutover_id=user-" .. user .. "; consent=yes",
    })
  end
end

function request()
  n = n % #requests + 1
  return requests[n]
end

-- Tail latency beyond wrk's --latency table, in microseconds.
function done(summary, latency, requests)
  io.write(string.format("TAIL p99.9=%d p99.99=%d max=%d\n",
    latency:percentile(99.9), latency:percentile(99.99), latency.max))
end
