-- wrk script for bench/soak.sh: sends a mix of requests and checks every response's status
-- against the statuses its request may get.
--
--   wrk -t N -c N -s check.lua URL -- 'PATH STATUS[,STATUS...] [HEADER: VALUE]' ...
--
-- Run it with as many threads as connections: each thread then has one connection, so
-- responses arrive in the order the requests went out and each can be matched to its request.
-- done() prints `soak-*` lines for bench/soak.sh to read.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local specs = {}
local queue = {}
local head, tail = 1, 0
local next_spec
local checked = false
counts = {}
unexpected = 0
examples = ""

function init(args)
  for _, arg in ipairs(args) do
    local path, statuses, header = arg:match("^(%S+)%s+(%S+)%s*(.*)$")
    local allowed = {}
    for s in statuses:gmatch("%d+") do allowed[tonumber(s)] = true end
    local headers = {}
    if header ~= "" then
      local name, value = header:match("^([^:]+):%s*(.*)$")
      headers[name] = value
    end
    table.insert(specs, {path = path, allowed = allowed, headers = headers})
  end
  -- Threads start at different places in the mix.
  next_spec = (id or 0) % #specs + 1
end

function request()
  -- wrk calls request() once on the first thread to check the script before any connection
  -- exists; that request is never sent, so it must not wait for a response.
  if id == 0 and not checked then
    checked = true
    return wrk.format("GET", specs[1].path, specs[1].headers)
  end
  local i = next_spec
  next_spec = next_spec % #specs + 1
  tail = tail + 1
  queue[tail] = i
  local s = specs[i]
  return wrk.format("GET", s.path, s.headers)
end

function response(status, headers, body)
  local i = queue[head]
  queue[head] = nil
  head = head + 1
  if i == nil then
    unexpected = unexpected + 1
    return
  end
  local key = i .. " " .. status
  counts[key] = (counts[key] or 0) + 1
  if not specs[i].allowed[status] then
    unexpected = unexpected + 1
    if #examples < 400 then
      examples = examples .. specs[i].path .. " -> " .. status .. "; "
    end
  end
end

function done(summary, latency, requests)
  local total = {}
  local bad = 0
  local ex = ""
  for _, t in ipairs(threads) do
    for key, n in pairs(t:get("counts")) do
      total[key] = (total[key] or 0) + n
    end
    bad = bad + t:get("unexpected")
    ex = ex .. t:get("examples")
  end
  local e = summary.errors
  io.write(string.format("soak-requests %d\n", summary.requests))
  io.write(string.format("soak-socket-errors connect=%d read=%d write=%d timeout=%d\n",
    e.connect, e.read, e.write, e.timeout))
  io.write(string.format("soak-unexpected %d %s\n", bad, ex))
  for key, n in pairs(total) do
    io.write(string.format("soak-status %s %d\n", key, n))
  end
  io.write(string.format("soak-latency-ms p50=%.2f p99=%.2f max=%.2f\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
