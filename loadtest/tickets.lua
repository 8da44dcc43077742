-- wrk generator of realistic ticket traffic for POST /ticket.
--
--   wrk -t1 -c50 -d10s -s loadtest/tickets.lua http://127.0.0.1:9098/ticket
--
-- Each body has a fresh order number, 1-30 lines whose product ids are
-- drawn from a Zipf distribution over a catalogue (a few products are in
-- almost every ticket, like a coffee), and a correct Total. A share of the
-- bodies is malformed in the ways real registers get it wrong.
-- Environment:
--   TICKETS_CATALOGUE   products in the catalogue (default 5000)
--   TICKETS_ZIPF_S      Zipf exponent, 0 = uniform (default 1.1)
--   TICKETS_MALFORMED   share of malformed tickets, 0..1 (default 0.02)
--   TICKETS_POOL        distinct bodies prepared per thread (default 4096)
--   TICKETS_FILE        post this file on every request instead (e.g. the
--                       sample loadtest/ticket.txt, like the old `hey -D`)
--   TICKETS_KEYED       1: every request carries an Idempotency-Key of its
--                       own, as a careful producer sends (each is new, so
--                       each is looked up and stored)
-- At the end it prints the count of each status code, e.g. `status 202: 512345`.

local catalogue = tonumber(os.getenv("TICKETS_CATALOGUE") or "5000")
local zipf_s = tonumber(os.getenv("TICKETS_ZIPF_S") or "1.1")
local malformed_share = tonumber(os.getenv("TICKETS_MALFORMED") or "0.02")
local pool_size = tonumber(os.getenv("TICKETS_POOL") or "4096")

local threads = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

-- Cumulative Zipf weights over ranks 1..catalogue.
local function zipf_cdf(n, s)
   local cdf, total = {}, 0
   for rank = 1, n do
      total = total + 1 / (rank ^ s)
      cdf[rank] = total
   end
   for rank = 1, n do cdf[rank] = cdf[rank] / total end
   return cdf
end

local function draw(cdf)
   local u, lo, hi = math.random(), 1, #cdf
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
   end
   return lo
end

local function price_of(rank)
   -- A stable price per product, in cents.
   return 50 + (rank * 7919) % 2950
end

local function money(cents)
   return string.format("%d.%02d", math.floor(cents / 100), cents % 100)
end

local function ticket(order, cdf)
   local lines, total = {}, 0
   for _ = 1, math.random(1, 30) do
      local rank = draw(cdf)
      local cents = price_of(rank)
      total = total + cents
      lines[#lines + 1] = string.format("Product %d,p%05d,%s", rank, rank, money(cents))
   end
   local vat = math.floor(total / 11)
   return string.format("Order: %d\nVAT: %s\nTotal: %s\n\nproduct,product_id,price\n%s\n",
      order, money(vat), money(total), table.concat(lines, "\n"))
end

local function malformed(order, cdf)
   local kind = math.random(1, 4)
   if kind == 1 then   -- a price that does not parse
      return string.format("Order: %d\nVAT: 0.20\nTotal: 2.00\n\nproduct,product_id,price\nCafé,IZ8z,2.0O\n", order)
   elseif kind == 2 then -- totals that disagree
      return (ticket(order, cdf):gsub("Total: [%d.]+", "Total: 0.01"))
   elseif kind == 3 then -- no product table at all
      return string.format("Order: %d\nVAT: 1.00\nTotal: 10.00\n", order)
   end
   return "<html><body>502 Bad Gateway</body></html>\n" -- a proxy's error page
end

local function read_file(path)
   local file = assert(io.open(path, "rb"))
   local content = file:read("*a")
   file:close()
   return content
end

function init(args)
   statuses = {}
   next_body = 0
   key_base = os.time()
   if os.getenv("TICKETS_FILE") then
      bodies, pool_size = { read_file(os.getenv("TICKETS_FILE")) }, 1
      return
   end
   math.randomseed(os.time() * 1000 + (id or 0))
   local cdf = zipf_cdf(catalogue, zipf_s)
   bodies = {}
   local base = (id or 0) * 100000000 + (os.time() % 100000) * 1000
   for i = 1, pool_size do
      if math.random() < malformed_share then
         bodies[i] = malformed(base + i, cdf)
      else
         bodies[i] = ticket(base + i, cdf)
      end
   end
end

local keyed = os.getenv("TICKETS_KEYED") == "1"
local sent = 0

function request()
   next_body = next_body % pool_size + 1
   local headers = { ["Content-Type"] = "text/plain" }
   if keyed then
      sent = sent + 1
      headers["Idempotency-Key"] = string.format("%d-%d-%d", key_base, id or 0, sent)
   end
   return wrk.format("POST", nil, headers, bodies[next_body])
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local merged = {}
   for _, thread in ipairs(threads) do
      local counts = thread:get("statuses")
      for status, count in pairs(counts) do
         merged[status] = (merged[status] or 0) + count
      end
   end
   for status, count in pairs(merged) do
      io.write(string.format("status %d: %d\n", status, count))
   end
   io.write(string.format("latency p50 %.3f ms, p99 %.3f ms\n",
      latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
