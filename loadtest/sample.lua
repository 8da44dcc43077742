-- wrk script posting the sample ticket (loadtest/ticket.txt) on every request,
-- like the old service's `hey -D loadtest/ticket.txt`, and counting statuses.
--   wrk -t1 -c50 -d10s -s loadtest/sample.lua http://127.0.0.1:9098/ticket

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(os.getenv("TICKETS_FILE") or "loadtest/ticket.txt", "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   wrk.headers["Content-Type"] = "text/plain"
   file:close()
   statuses = {}
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local merged = {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         merged[status] = (merged[status] or 0) + count
      end
   end
   for status, count in pairs(merged) do
      io.write(string.format("status %d: %d\n", status, count))
   end
end
