-- Shared by the scenario scripts: users with their tokens, request builders, and the result line.
--
-- bench.run writes the users file (BENCH_USERS) and names this folder (BENCH_LUA_DIR). Every request
-- goes to a random user of the sample, with that user's own token, about one of that user's own tasks:
-- user n's tasks are first_task .. first_task + tasks_per_user - 1, in the order the dataset loaded them.

local data = dofile(os.getenv("BENCH_USERS"))
local users = data.users
local tasks_per_user = data.tasks_per_user
local list_query = "?limit=" .. data.list_page_size

for _, user in ipairs(users) do
   user.tasks_path = "/api/" .. user.id .. "/tasks"
   user.headers = { ["Authorization"] = "Bearer " .. user.token }
   user.json_headers = { ["Authorization"] = "Bearer " .. user.token, ["Content-Type"] = "application/json" }
end

local function pick_user()
   return users[math.random(#users)]
end

local function task_path(user)
   return user.tasks_path .. "/" .. (user.first_task + math.random(0, tasks_per_user - 1))
end

local requests = {}

function requests.list()
   local user = pick_user()
   return wrk.format("GET", user.tasks_path .. list_query, user.headers)
end

function requests.get()
   local user = pick_user()
   return wrk.format("GET", task_path(user), user.headers)
end

function requests.create()
   local user = pick_user()
   local body = '{"title": "Benchmark task ' .. math.random(1, 1000000000) .. '"}'
   return wrk.format("POST", user.tasks_path, user.json_headers, body)
end

function requests.toggle()
   local user = pick_user()
   return wrk.format("PATCH", task_path(user) .. "/complete", user.headers)
end

function requests.update()
   local user = pick_user()
   local body = '{"title": "Benchmark task ' .. math.random(1, 1000000000) .. '"}'
   return wrk.format("PUT", task_path(user), user.json_headers, body)
end

-- The delete scenario's pool (bench/deletable.py): this thread's deletes take the pool's positions
-- thread_index, thread_index + threads, ..., going round the users, so no two requests ask for the
-- same task. Each thread has its own Lua state, hence its own count.
local deletable = data.deletable
local wrk_threads = tonumber(os.getenv("BENCH_WRK_THREADS"))
local deletes = 0

function requests.delete()
   local position = deletes * wrk_threads + thread_index
   deletes = deletes + 1
   local user_index = position % #users
   local user = users[user_index + 1]
   local task_id = deletable.first + user_index * deletable.per_user + math.floor(position / #users)
   return wrk.format("DELETE", user.tasks_path .. "/" .. task_id, user.headers)
end

-- The mixed workload: data.mix is a list of {scenario, weight}, the same weights pgbench uses.
local mix_total = 0
for _, entry in ipairs(data.mix) do
   mix_total = mix_total + entry[2]
end

function requests.mixed()
   local roll = math.random(1, mix_total)
   for _, entry in ipairs(data.mix) do
      roll = roll - entry[2]
      if roll <= 0 then
         return requests[entry[1]]()
      end
   end
end

-- Threads: each gets its own random seed; statuses other than 2xx are counted per status.
local threads = {}

function setup(thread)
   thread:set("seed", os.time() * 100 + #threads)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

function init(args)
   math.randomseed(seed)
   unexpected = {}
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      unexpected[status] = (unexpected[status] or 0) + 1
   end
end

function done(summary, latency, _)
   local statuses = {}
   local non_2xx = 0
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("unexpected")) do
         statuses[status] = (statuses[status] or 0) + count
         non_2xx = non_2xx + count
      end
   end
   local listed = {}
   for status, count in pairs(statuses) do
      table.insert(listed, string.format('"%d": %d', status, count))
   end
   local errors = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non_2xx": %d, '
         .. '"statuses": {%s}, "socket_errors": %d, "timeouts": %d}\n',
      summary.requests, summary.duration, latency:percentile(50.0), latency:percentile(99.0), non_2xx,
      table.concat(listed, ", "), errors.connect + errors.read + errors.write, errors.timeout
   ))
end

return requests
