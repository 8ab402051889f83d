-- wrk script: POSTs the signed callbacks of a file (one body a line, written by
-- `callbacks.py pool`), each once and in order, as Click's are all distinct; it starts over
-- only if the run outlasts the file. Requests are built once, in init, so that the load
-- generator spends its time on the sockets.
--
--   wrk -t1 -c64 -d8s -s benches/signed.lua http://127.0.0.1:PORT/click/prepare/ -- BODIES_FILE

local requests, n, i = {}, 0, 0

function init(args)
    local headers = {
        ["Content-Type"] = "application/x-www-form-urlencoded",
        ["Host"] = "shop.example",
    }
    for body in io.lines(args[1]) do
        n = n + 1
        requests[n] = wrk.format("POST", nil, headers, body)
    end
    assert(n > 0, "no bodies in " .. args[1])
end

function request()
    i = i + 1
    if i > n then i = 1 end
    return requests[i]
end
