-- The peer's requests: bench/common.lua's scenarios as PostGraphile GraphQL operations, with the same
-- users, tokens, tasks and random choices, and the same result line.
--
-- Each scenario sends one constant document with variables (so grafserv parses and validates it
-- once) and selects every field the API's response carries. GraphQL answers 200 even when nothing
-- was found or a mutation failed, so a 200 whose body carries "errors", a null where the row should
-- be, or an empty list (every user of the sample has tasks) is counted like a non-2xx response,
-- under the pseudo-status 0.

local dir = os.getenv("BENCH_LUA_DIR")
-- The API's requests, with their setup, init and done hooks; every scenario is replaced below, so
-- its `mixed` (which picks a scenario by name, with the API's weights) sends the peer's, and
-- `response` is replaced too.
local requests = dofile(dir .. "/common.lua")
local data = dofile(os.getenv("BENCH_USERS"))
local users = data.users
local tasks_per_user = data.tasks_per_user

local TASK_FIELDS = "rowId userId title description completed createdAt version updatedAt"

local LIST = "query List($userId: String!, $first: Int!) { allTasks(condition: {userId: $userId},"
   .. " orderBy: [CREATED_AT_DESC, ROW_ID_DESC], first: $first) { nodes { " .. TASK_FIELDS .. " }"
   .. " pageInfo { hasNextPage endCursor } } }"
local GET = "query Get($id: BigInt!) { taskByRowId(rowId: $id) { " .. TASK_FIELDS .. " } }"
local CREATE = "mutation Create($task: TaskInput!) { createTask(input: {task: $task}) { task { "
   .. TASK_FIELDS .. " } } }"
local UPDATE = "mutation Update($id: BigInt!, $patch: TaskPatch!) {"
   .. " updateTaskByRowId(input: {rowId: $id, taskPatch: $patch}) { task { " .. TASK_FIELDS .. " } } }"

for _, user in ipairs(users) do
   user.headers = { ["Authorization"] = "Bearer " .. user.token, ["Content-Type"] = "application/json" }
end

local function pick_user()
   return users[math.random(#users)]
end

local function pick_task(user)
   return user.first_task + math.random(0, tasks_per_user - 1)
end

-- Ids and titles are ASCII without quotes or backslashes, so they go into the JSON as they are.
local function post(user, document, variables)
   local body = '{"query": "' .. document .. '", "variables": ' .. variables .. "}"
   return wrk.format("POST", "/graphql", user.headers, body)
end

local function title()
   return '"Benchmark task ' .. math.random(1, 1000000000) .. '"'
end

function requests.list()
   local user = pick_user()
   return post(user, LIST, '{"userId": "' .. user.id .. '", "first": ' .. data.list_page_size .. "}")
end

function requests.get()
   local user = pick_user()
   return post(user, GET, '{"id": "' .. pick_task(user) .. '"}')
end

function requests.create()
   local user = pick_user()
   return post(user, CREATE, '{"task": {"userId": "' .. user.id .. '", "title": ' .. title() .. "}}")
end

-- The API's toggle flips the flag in its UPDATE; a GraphQL client sets it, to either value.
function requests.toggle()
   local user = pick_user()
   local completed = math.random(0, 1) == 1 and "true" or "false"
   return post(user, UPDATE, '{"id": "' .. pick_task(user) .. '", "patch": {"completed": ' .. completed .. "}}")
end

function requests.update()
   local user = pick_user()
   return post(user, UPDATE, '{"id": "' .. pick_task(user) .. '", "patch": {"title": ' .. title() .. "}}")
end

local GRAPHQL_FAILURE = 0

function response(status, headers, body)
   if status < 200 or status > 299 then
      unexpected[status] = (unexpected[status] or 0) + 1
   elseif body:find('"errors"', 1, true) or body:find("null}}", 1, true) or body:find('"nodes":[]', 1, true) then
      unexpected[GRAPHQL_FAILURE] = (unexpected[GRAPHQL_FAILURE] or 0) + 1
   end
end

return requests
