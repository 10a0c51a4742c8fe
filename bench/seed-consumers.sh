#!/usr/bin/env bash
# Seeds the consumer store (`consumers: {store: redis}`) of a throwaway Redis with N consumers,
# each with one API key, in the store's format (src/policy/auth/stored/record.rs), in one Lua
# call. Consumer 1, `bench-user`, holds the key in bench/consumers-redis-key.txt; the others hold
# keys nobody knows. Replaces what the store held.
#   bench/seed-consumers.sh REDIS_PORT [N=10000] [KEY_PREFIX=portico:]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="$1"
n="${2:-10000}"
prefix="${3:-portico:}"
digest="$(tr -d '\n' < "$here/consumers-redis-key.txt" | sha256sum | cut -d' ' -f1)"
p="${prefix}{consumers}:"
lua='
local n, digest = tonumber(ARGV[1]), ARGV[2]
for _, k in ipairs(KEYS) do redis.call("DEL", k) end
for i = 1, n do
  local id = "c_" .. i
  local name = (i == 1) and "bench-user" or ("consumer-" .. i)
  local d = (i == 1) and digest or (redis.sha1hex("k" .. i) .. string.sub(redis.sha1hex("x" .. i), 1, 24))
  local doc = "{\"id\":\"" .. id .. "\",\"name\":\"" .. name .. "\",\"groups\":[\"bench\"],\"metadata\":{\"tier\":\"bench\"},"
    .. "\"keys\":[{\"id\":\"k_" .. i .. "\",\"sha256\":\"" .. d .. "\",\"prefix\":\"pk_" .. string.sub(d, 1, 4) .. "\",\"created_at\":0}],"
    .. "\"basic\":[],\"jwt_subjects\":[],\"rev\":1,\"created_at\":0,\"updated_at\":0}"
  redis.call("HSET", KEYS[1], id, doc)
  redis.call("HSET", KEYS[2], name, id)
  redis.call("HSET", KEYS[3], d, id)
end
redis.call("SET", KEYS[6], n)
return n
'
redis-cli -p "$port" EVAL "$lua" 6 "${p}records" "${p}names" "${p}keys" "${p}basic" "${p}subjects" "${p}version" "$n" "$digest" >/dev/null
echo "seeded $n consumers into redis on port $port (key of bench-user: bench/consumers-redis-key.txt)"
