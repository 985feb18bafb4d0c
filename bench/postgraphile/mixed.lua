-- PostGraphile scenario "mixed": see common.lua.
local requests = dofile(os.getenv("BENCH_LUA_DIR") .. "/postgraphile/common.lua")
request = requests.mixed
