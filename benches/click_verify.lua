-- The nginx+Lua peer of click-gateway (libnginx-mod-http-lua, as OpenResty users run it): the
-- same job on a callback path, so load.sh compares like with like. In the access phase of the
-- callback locations it reads the body, refuses what the gateway refuses, answers Click's JSON
-- -1 / -3 / -8 itself (HTTP 200, application/json), and lets a verified callback through to
-- proxy_pass with X-Click-Signature-Verified set to its service_id.
--
-- The checks follow the gateway's order (src/click/callback.rs): repeated names and missing
-- fields (-8), action (-3), merchant_prepare_id for a Complete and the shape of the ids, error
-- and amount (-8), then the key of the service and the md5 (-1). Differences, all outside what
-- the benchmark sends: multipart bodies are refused here (the gateway parses them), and a body
-- over 16 KiB gets -8 from the declared length or, without one, from the body not fitting in
-- client_body_buffer_size. Only free-text fields (and unknown ones) are checked for UTF-8: the
-- others must be digits or decimal text.
--
-- nginx.conf:
--   lua_package_path "<benches>/?.lua;;";
--   init_by_lua_block { require("click_verify").load_keys("<keys.lua>") }
--   location = /click/prepare/ { access_by_lua_block { require("click_verify").access() } ... }
-- where <keys.lua> returns { ["<service_id>"] = { "<key>", "<older key>", ... }, ... }.

local ngx = ngx
local md5 = ngx.md5
local byte, find, format, gsub, lower, sub = string.byte, string.find, string.format,
    string.gsub, string.lower, string.sub
local type, pairs = type, pairs

local M = {}

local MAX_BODY = 16384
-- More fields than this and get_post_args reports "truncated": refused.
local MAX_FIELDS = 64

local NOTES = {
    [-1] = "SIGN CHECK FAILED!",
    [-3] = "Action not found",
    [-8] = "Error in request from click",
}

-- Required in every callback, non-empty (error_note is required but may be empty).
local REQUIRED = {
    "click_trans_id", "service_id", "click_paydoc_id", "merchant_trans_id", "amount",
    "action", "error", "sign_time", "sign_string",
}

-- Every field a callback has; and those of them that are free text.
local KNOWN = { merchant_prepare_id = true, error_note = true }
for i = 1, #REQUIRED do KNOWN[REQUIRED[i]] = true end
local TEXT = { "merchant_trans_id", "error_note", "sign_time", "sign_string" }

local keys = {}

function M.load_keys(path)
    keys = dofile(path)
end

-- Byte loops rather than patterns: LuaJIT compiles these, not string.find with a pattern.
-- Bytes from..to (to: the end by default) are all digits, and there is at least one.
local function digits(s, from, to)
    to = to or #s
    if to < from then return false end
    for i = from, to do
        local c = byte(s, i)
        if c < 48 or c > 57 then return false end -- "0".."9"
    end
    return true
end

-- A decimal id of at most 64 bits: digits only, no sign (leading zeros allowed).
local U64_MAX = "18446744073709551615"
local function is_id(s)
    if not digits(s, 1) then return false end
    if #s < 20 then return true end
    s = gsub(s, "^0+", "")
    return #s < 20 or (#s == 20 and s <= U64_MAX)
end

-- The number an id stands for, as JSON writes it (no leading zeros).
local function id_text(s)
    if byte(s, 1) ~= 48 then return s end -- "0"
    s = gsub(s, "^0+", "")
    if s == "" then return "0" end
    return s
end

-- Click's error field: an integer, possibly negative, at most 20 digits.
local function is_integer(s)
    local from = byte(s, 1) == 45 and 2 or 1 -- "-"
    return #s - from < 20 and digits(s, from)
end

-- Decimal text: digits, at most one ".", with digits on both sides of it.
local function is_amount(s)
    local dot = find(s, ".", 1, true)
    if not dot then return digits(s, 1) end
    return digits(s, 1, dot - 1) and digits(s, dot + 1)
end

-- Strict UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF); only called for a
-- value with a byte over 0x7F.
local function is_utf8(s)
    local i, n = 1, #s
    while i <= n do
        local c = byte(s, i)
        if c < 0x80 then
            i = i + 1
        else
            local len, lo, hi = 0, 0x80, 0xBF
            if c >= 0xC2 and c <= 0xDF then len = 2
            elseif c == 0xE0 then len, lo = 3, 0xA0
            elseif c == 0xED then len, hi = 3, 0x9F
            elseif c >= 0xE1 and c <= 0xEF then len = 3
            elseif c == 0xF0 then len, lo = 4, 0x90
            elseif c >= 0xF1 and c <= 0xF3 then len = 4
            elseif c == 0xF4 then len, hi = 4, 0x8F
            else return false end
            if i + len - 1 > n then return false end
            local c2 = byte(s, i + 1)
            if c2 < lo or c2 > hi then return false end
            for j = i + 2, i + len - 1 do
                local cj = byte(s, j)
                if cj < 0x80 or cj > 0xBF then return false end
            end
            i = i + len
        end
    end
    return true
end

-- JSON string escaping as serde_json does it: quote, backslash, control characters below 0x20.
local ESCAPES = {
    ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t',
    ['\b'] = '\\b', ['\f'] = '\\f',
}
local function escape_char(c)
    return ESCAPES[c] or format("\\u%04x", byte(c))
end
local function json_string(s)
    return '"' .. gsub(s, '[%z\1-\31"\\]', escape_char) .. '"'
end

-- Click's error answer, echoing click_trans_id when it is a number and merchant_trans_id when
-- it was sent once, not empty (args is nil when the body could not be read as a form).
local function refuse(code, args)
    local body = ""
    if args then
        local id, order = args.click_trans_id, args.merchant_trans_id
        if type(id) == "string" and is_id(id) then
            body = '"click_trans_id":' .. id_text(id) .. ","
        end
        if type(order) == "string" and order ~= "" then
            body = body .. '"merchant_trans_id":' .. json_string(order) .. ","
        end
    end
    body = "{" .. body .. '"error":' .. code .. ',"error_note":"' .. NOTES[code] .. '"}'
    ngx.status = 200
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Content-Length"] = #body
    ngx.print(body)
    return ngx.exit(200)
end

-- Text that is not UTF-8 (is_utf8 only for text with a byte over 0x7F).
local function bad_text(s)
    for i = 1, #s do
        if byte(s, i) > 127 then return not is_utf8(s) end
    end
    return false
end

function M.access()
    if ngx.req.get_method() ~= "POST" then return refuse(-8) end
    local var = ngx.var
    local encoding = var.http_content_encoding
    if encoding and lower(encoding) ~= "identity" then return refuse(-8) end
    local ctype = var.content_type
    if not ctype then return refuse(-8) end
    ctype = lower(ctype)
    if sub(ctype, 1, 33) ~= "application/x-www-form-urlencoded"
        or not (#ctype == 33 or find(ctype, "^[ \t]*;", 34)) then
        return refuse(-8)
    end
    local declared = tonumber(var.content_length)
    if declared and declared > MAX_BODY then return refuse(-8) end

    ngx.req.read_body()
    -- nil when the body is not in memory (over client_body_buffer_size, 16k), and for more
    -- fields than any callback has.
    local args, err = ngx.req.get_post_args(MAX_FIELDS)
    if not args or err == "truncated" then return refuse(-8) end

    -- Repeated names (a table), known or not; text that is not UTF-8. The fields checked
    -- below for digits and decimal text are ASCII when they pass.
    for name, v in pairs(args) do
        if type(v) == "table" then return refuse(-8, args) end
        if not KNOWN[name] and (bad_text(name) or (v ~= true and bad_text(v))) then
            return refuse(-8)
        end
    end
    for i = 1, #TEXT do
        local v = args[TEXT[i]]
        if type(v) == "string" and bad_text(v) then return refuse(-8) end
    end
    for i = 1, #REQUIRED do
        local v = args[REQUIRED[i]]
        if type(v) ~= "string" or v == "" then return refuse(-8, args) end
    end
    -- Present, possibly empty (a name without "=", which get_post_args gives as true, is an
    -- empty value to the gateway too).
    if args.error_note == nil then return refuse(-8, args) end

    local action = args.action
    local prepare_id = ""
    if action == "1" then
        prepare_id = args.merchant_prepare_id
        if type(prepare_id) ~= "string" or not is_id(prepare_id) then
            return refuse(-8, args)
        end
    elseif action ~= "0" then
        return refuse(-3, args)
    end
    local trans_id, service_id = args.click_trans_id, args.service_id
    if not (is_id(trans_id) and is_id(service_id) and is_id(args.click_paydoc_id)
            and is_integer(args.error) and is_amount(args.amount)) then
        return refuse(-8, args)
    end

    local service = id_text(service_id)
    local secrets = keys[service]
    if not secrets then return refuse(-1, args) end
    local sign = lower(args.sign_string)
    local order, amount, sign_time = args.merchant_trans_id, args.amount, args.sign_time
    for i = 1, #secrets do
        if md5(trans_id .. service_id .. secrets[i] .. order .. prepare_id .. amount
                .. action .. sign_time) == sign then
            var.click_verified = service
            return
        end
    end
    return refuse(-1, args)
end

return M
