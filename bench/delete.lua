-- wrk scenario "delete": see common.lua.
local requests = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
request = requests.delete
