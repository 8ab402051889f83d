#!/usr/bin/env python3
"""Signed Click callbacks for the load benchmarks, and the check that a peer does the job.

    callbacks.py selftest VECTORS GATEWAY   the signer agrees with the protocol's test vectors
                                            and with `click-gateway sign`
    callbacks.py pool FILE COUNT BASE       COUNT distinct signed Prepare bodies, one a line,
                                            click_trans_id from BASE
    callbacks.py body                       one signed Prepare body
    callbacks.py check URL KIND [LABEL]     sends the check cases to URL (http:// or https://)
                                            and compares every answer; KIND is "verifier"
                                            (must refuse what Click's rules refuse) or "proxy"
                                            (verifies nothing: everything reaches the upstream)

Keys: service 12345 holds BENCH_KEY (slot 0, what the load bodies are signed with) and the
test vectors' key (slot 1); service 70001 holds the third vector's key. The same table is
written for the gateway (keys.toml) and for click_verify.lua by load.sh.
"""
import datetime
import hashlib
import http.client
import json
import os
import ssl
import subprocess
import sys
import tempfile
import urllib.parse

SERVICE = "12345"
VECTOR_KEY = "TEST_SECRET_aB3dE5"
VECTOR_KEY_70001 = "fake+key/with=chars&x"
# What the upstream of load.sh answers (benches/common.sh, upstream_conf): a callback that
# got this was forwarded.
FORWARDED = '"merchant_prepare_id":5001'
NOTES = {-1: "SIGN CHECK FAILED!", -3: "Action not found", -8: "Error in request from click"}
# Near misses of the first vector that must get -1 (the same four as tests/vectors.rs): amount
# hashed as 1000, as 1000.0, sign_time with its '+' kept, sign_time left encoded.
NEAR_MISSES = ["98bccec0b93a8c704d1daef634aeecb4", "8ec41dc0f1a8c1cb8955d2dced13e809",
               "1fe497622140d77fe18c1bcc7614b5fe", "03ef60ca3c406a74b005c9df9fb5a3be"]


def bench_key():
    return os.environ["BENCH_KEY"]


def encode(value):
    """application/x-www-form-urlencoded, as `click-gateway sign` writes it (WHATWG): space as
    '+', alphanumerics and *-._ kept, every other byte as %XX."""
    out = []
    for b in value.encode():
        c = chr(b)
        if b < 128 and (c.isalnum() or c in "*-._"):
            out.append(c)
        elif c == " ":
            out.append("+")
        else:
            out.append("%%%02X" % b)
    return "".join(out)


def form(fields):
    return "&".join(name + "=" + encode(value) for name, value in fields)


def digest(f, key):
    """The Prepare formula, or the Complete one when merchant_prepare_id is there."""
    text = (f["click_trans_id"] + f["service_id"] + key + f["merchant_trans_id"]
            + f.get("merchant_prepare_id", "") + f["amount"] + f["action"] + f["sign_time"])
    return hashlib.md5(text.encode()).hexdigest()


def tashkent_now():
    return datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=5))).strftime(
        "%Y-%m-%d %H:%M:%S")


def callback(trans_id, order, amount, action="0", prepare_id=None, service=SERVICE,
             sign_time=None, key=None):
    """The fields of a signed callback, in Click's order, as a list of (name, value)."""
    f = {"click_trans_id": str(trans_id), "service_id": service,
         "click_paydoc_id": str(trans_id + 1200000000), "merchant_trans_id": order}
    if prepare_id is not None:
        f["merchant_prepare_id"] = str(prepare_id)
    f.update({"amount": amount, "action": action, "error": "0", "error_note": "Success",
              "sign_time": sign_time or tashkent_now()})
    f["sign_string"] = digest(f, key or bench_key())
    return list(f.items())


def selftest(vectors_path, gateway):
    for v in json.load(open(vectors_path)):
        fields = urllib.parse.parse_qsl(v["body"], keep_blank_values=True)
        f = dict(fields)
        assert digest(f, v["secret"]) == v["md5"] == f["sign_string"], v["name"]
        assert form(fields) == v["body"], v["name"]
    env = dict(os.environ, BENCH_KEY=bench_key())
    for action, extra in (("prepare", []), ("complete", ["--merchant-prepare-id", "5001"])):
        out = subprocess.run(
            [gateway, "sign", "--action", action, "--service-id", SERVICE,
             "--click-trans-id", "2103040001", "--click-paydoc-id", "3303040001",
             "--merchant-trans-id", "заказ 1", "--amount", "1000.00",
             "--sign-time", "2026-11-28 12:00:00", "--secret-env", "BENCH_KEY"] + extra,
            check=True, capture_output=True, text=True, env=env).stdout.strip()
        fields = [("click_trans_id", "2103040001"), ("service_id", SERVICE),
                  ("click_paydoc_id", "3303040001"), ("merchant_trans_id", "заказ 1")]
        if extra:
            fields.append(("merchant_prepare_id", "5001"))
        fields += [("amount", "1000.00"), ("action", "0" if action == "prepare" else "1"),
                   ("error", "0"), ("error_note", "Success"), ("sign_time", "2026-11-28 12:00:00")]
        fields.append(("sign_string", digest(dict(fields), bench_key())))
        assert form(fields) == out, (action, form(fields), out)
    # The pool's template writes what callback() writes.
    with tempfile.NamedTemporaryFile("r") as tmp:
        pool(tmp.name, 3, 2103040000)
        for n, line in enumerate(tmp.read().splitlines(), 2103040000):
            t = dict(urllib.parse.parse_qsl(line))["sign_time"]
            assert line == form(callback(n, "order-%d" % n, "%d.00" % (1000 + n % 9000),
                                         sign_time=t)), line
    print("signer: agrees with the protocol's test vectors and with `click-gateway sign`")


def pool(path, count, base):
    """The bodies of callback(), written from a template: only the ids, the order and the
    amount change, and they need no escaping (a million bodies take a few seconds)."""
    sign_time = tashkent_now()
    key = bench_key()
    template = form([("click_trans_id", "{0}"), ("service_id", SERVICE),
                     ("click_paydoc_id", "{1}"), ("merchant_trans_id", "order-{0}"),
                     ("amount", "{2}"), ("action", "0"), ("error", "0"),
                     ("error_note", "Success"), ("sign_time", sign_time),
                     ("sign_string", "{3}")]).replace("%7B", "{").replace("%7D", "}")
    head = SERVICE + key
    with open(path, "w") as out:
        for n in range(base, base + count):
            amount = "%d.00" % (1000 + n % 9000)
            md5 = hashlib.md5(("%d%sorder-%d%s0%s" % (n, head, n, amount, sign_time)).encode())
            out.write(template.format(n, n + 1200000000, amount, md5.hexdigest()) + "\n")


def refusal(code, fields):
    """Click's error answer as the gateway writes it (src/click/respond.rs)."""
    f = dict(fields)
    body = {}
    if f.get("click_trans_id", "").isdigit():
        body["click_trans_id"] = int(f["click_trans_id"])
    if f.get("merchant_trans_id"):
        body["merchant_trans_id"] = f["merchant_trans_id"]
    body.update(error=code, error_note=NOTES[code])
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def cases(vectors_path):
    """(name, method, path, content type, body, expected): expected is "forward" or an error
    code; an error answer must be exactly refusal(code, fields)."""
    out = []
    ct = "application/x-www-form-urlencoded"

    def add(name, fields, expect, path="/click/prepare/", method="POST", ctype=ct, body=None,
            echo=True):
        # echo: refused after reading the body, so the answer echoes the ids it could read
        # (a refusal from the request head alone echoes nothing).
        out.append((name, method, path, ctype, form(fields) if body is None else body, expect,
                    fields if echo else []))

    prepare = callback(2103049001, "order-9001", "1000.00")
    complete = callback(2103049001, "order-9001", "1000.00", action="1", prepare_id=5001)
    add("signed Prepare", prepare, "forward")
    add("signed Complete (includes merchant_prepare_id)", complete, "forward",
        path="/click/complete/")
    add("Complete on the Prepare path", complete, "forward")
    add("sign_string in upper case", [(n, v.upper() if n == "sign_string" else v)
                                      for n, v in prepare], "forward")
    for v in json.load(open(vectors_path)):
        fields = urllib.parse.parse_qsl(v["body"], keep_blank_values=True)
        add("vector " + v["name"].split(" ")[0] + " (key in slot 1 or service 70001)",
            fields, "forward", body=v["body"])
    v1 = urllib.parse.parse_qsl(json.load(open(vectors_path))[0]["body"])
    for d in NEAR_MISSES:
        add("vector V1 near miss " + d[:8],
            [(n, d if n == "sign_string" else v) for n, v in v1], -1)
    flipped = [(n, ("0" if v[0] != "0" else "1") + v[1:] if n == "sign_string" else v)
               for n, v in prepare]
    add("forged: one hex digit of sign_string changed", flipped, -1)
    as_prepare = dict(complete)
    del as_prepare["merchant_prepare_id"]
    add("Complete signed without merchant_prepare_id", [
        (n, digest(as_prepare, bench_key()) if n == "sign_string" else v) for n, v in complete], -1)
    add("amount changed after signing (1000.00 -> 1000)",
        [(n, "1000" if n == "amount" else v) for n, v in prepare], -1)
    add("unknown service_id", callback(2103049002, "order-9002", "1000", service="99999"), -1)
    add("merchant_trans_id to escape in JSON, forged",
        [(n, 'a"b\\c\n\x01№' if n == "merchant_trans_id" else v) for n, v in flipped], -1)
    add("sign_time missing", [(n, v) for n, v in prepare if n != "sign_time"], -8)
    add("Complete without merchant_prepare_id",
        [(n, v) for n, v in complete if n != "merchant_prepare_id"], -8)
    add("amount sent twice", prepare[:5] + [("amount", "1000.00")] + prepare[5:], -8)
    add("unknown field sent twice", prepare + [("x", "1"), ("x", "2")], -8)
    add("click_trans_id not a number", [(n, "12a" if n == "click_trans_id" else v)
                                        for n, v in prepare], -8)
    add("amount not decimal text", [(n, "1e3" if n == "amount" else v) for n, v in prepare], -8)
    add("action=7", callback(2103049003, "order-9003", "1000", action="7"), -3)
    add("merchant_trans_id not UTF-8", prepare, -8, echo=False,
        body=form(prepare).replace("order-9001", "order-%FF"))
    # Signed afresh: under prepare's signature an emptied error_note is a replay with a field
    # changed, which the gateway's replay guard refuses (-1) when it is on.
    blank = callback(2103049004, "order-9004", "1000.00")
    add("error_note without '=' (an empty value) and an empty pair", blank, "forward",
        body=form(blank).replace("error_note=Success", "error_note&"))
    add("action without '='", prepare, -8, body=form(prepare).replace("action=0", "action"))
    # Refused from its Content-Length, before the body is read: over TLS the unread rest can
    # reset the connection before the answer is read, so this one is sent over HTTP only.
    add("body over 16 KiB (over HTTP only)", prepare, -8, echo=False,
        body=form(prepare + [("pad", "a" * 17000)]))
    add("text/plain body", prepare, -8, ctype="text/plain", echo=False)
    add("GET on a callback path", [], -8, method="GET", ctype=None, body="")
    return out


def request(url, method, path, ctype, body):
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=10,
                                           context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    headers = {"Host": "shop.example"}
    if ctype:
        headers["Content-Type"] = ctype
    conn.request(method, path, body=body.encode() if body else None, headers=headers)
    r = conn.getresponse()
    answer = (r.status, r.getheader("Content-Type"), r.read().decode())
    conn.close()
    return answer


def check(url, kind, vectors_path, label):
    bad = 0
    all_cases = cases(vectors_path)
    if url.startswith("https:"):
        all_cases = [c for c in all_cases if "over HTTP only" not in c[0]]
    for name, method, path, ctype, body, expect, fields in all_cases:
        status, got_type, got = request(url, method, path, ctype, body)
        if kind == "proxy" or expect == "forward":
            ok = status == 200 and FORWARDED in got
            want = "forwarded, the upstream's answer"
        else:
            want = refusal(expect, fields)
            ok = status == 200 and got_type == "application/json" and got == want
        if not ok:
            bad += 1
            print("  FAILED %s: wanted %s, got %s %s %r" % (name, want, status, got_type, got))
    if bad:
        sys.exit("%s %s: %d of %d check cases answered wrongly" % (label, url, bad, len(all_cases)))
    if kind == "proxy":
        print("  %-10s %-6s all %d cases forwarded (it verifies nothing)"
              % (label, url.split(":")[0], len(all_cases)))
    else:
        n = sum(1 for c in all_cases if c[5] == "forward")
        print("  %-10s %-6s %d valid callbacks forwarded, %d refused with Click's exact answer"
              % (label, url.split(":")[0], n, len(all_cases) - n))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    vectors = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data",
                           "click-vectors.json")
    if cmd == "selftest":
        selftest(args[0], args[1])
    elif cmd == "pool":
        pool(args[0], int(args[1]), int(args[2]))
    elif cmd == "body":
        print(form(callback(2103040001, "order-1", "1000.00")))
    elif cmd == "check":
        check(args[0], args[1], vectors, args[2] if len(args) > 2 else "")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
