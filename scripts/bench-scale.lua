-- wrk script for scripts/bench-scale.sh: sends requests picked at random
-- from a file, one request a line: "METHOD PATH [JSON BODY]". Every thread
-- stops after `max_requests` responses (the second script argument), so a
-- run is bounded in count as well as in time (wrk -d).
--
--   wrk -t2 -c4 -d10s --latency -s scripts/bench-scale.lua URL -- FILE MAX

local threads = {}
local counter = 1

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local requests = {}
local limit = 0
local seen = 0

function init(args)
  local file = args[1] or error("bench-scale.lua: give the request file")
  limit = tonumber(args[2] or "0") or 0
  for line in io.lines(file) do
    local method, path, body = line:match("^(%S+)%s+(%S+)%s*(.*)$")
    if method then
      local headers = nil
      if body == "" then
        body = nil
      else
        headers = { ["Content-Type"] = "application/json" }
      end
      table.insert(requests, wrk.format(method, path, headers, body))
    end
  end
  if #requests == 0 then
    error("bench-scale.lua: no requests in " .. file)
  end
  math.randomseed(os.time() * 100 + (id or 0))
end

function request()
  return requests[math.random(#requests)]
end

function response(status, headers, body)
  seen = seen + 1
  if limit > 0 and seen >= limit then
    wrk.thread:stop()
  end
end
