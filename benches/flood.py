#!/usr/bin/env python3
"""The figures of "one client cannot stop payments" (benches/flood.sh runs this; see
benches/README.md). Each scenario starts the release gateway afresh on the example
configuration's defaults (config/gateway.toml: listen ports and the ledger's path changed, nothing
else), plays an attack from addresses of 127.0.0.0/8 (each stands in for another machine), and
measures what a valid callback from an address that is not attacking gets, beside the same
callback with no attack. One JSON object per line on stdout.

    benches/flood.py --gateway target/release/click-gateway --upstream PORT --nginx PORT \
        --work DIR [--scenarios burst,hold,flood,outage,disk]
"""
import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "bench-flood-key"
SERVICE = "12345"
VALID_FROM = "127.0.99.1"


# --- Click bodies ---------------------------------------------------------------------------

def form(fields):
    from urllib.parse import quote_plus
    return "&".join(f"{k}={quote_plus(v)}" for k, v in fields)


def prepare(n, key=KEY, service=SERVICE, pad=0):
    """A Prepare for click_trans_id n, signed with `key` (Click's sign_string, protocol doc)."""
    f = {
        "click_trans_id": str(n), "service_id": service, "click_paydoc_id": "1",
        "merchant_trans_id": f"order-{n}", "amount": "1000.00", "action": "0",
        "error": "0", "error_note": "Success", "sign_time": "2026-12-07 12:00:00",
    }
    raw = (f["click_trans_id"] + f["service_id"] + key + f["merchant_trans_id"]
           + f["amount"] + f["action"] + f["sign_time"])
    f["sign_string"] = hashlib.md5(raw.encode()).hexdigest()
    body = form(f.items())
    if pad:
        body += "&pad=" + "x" * (pad - len(body) - 5)
    return body.encode()


def request(path, body, close=False):
    head = (f"POST {path} HTTP/1.1\r\nHost: shop.example\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n")
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


# --- the gateway under test -----------------------------------------------------------------

class Gateway:
    """config/gateway.toml as shipped, its ports and ledger moved into `work`."""

    def __init__(self, binary, work, upstream, extra_ledger=""):
        self.work = work
        os.makedirs(work, exist_ok=True)
        self.port, self.admin = free_port(), free_port()
        text = open(os.path.join(REPO, "config", "gateway.toml")).read()
        text = text.replace('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{self.port}"')
        text = text.replace('listen = "127.0.0.1:9901"', f'listen = "127.0.0.1:{self.admin}"')
        text = text.replace('url = "http://127.0.0.1:8000"', f'url = "http://127.0.0.1:{upstream}"')
        text = text.replace('keys_file = "keys.example.toml"', 'keys_file = "keys.toml"')
        self.db = os.path.join(work, "ledger.db")
        text = text.replace('database = "ledger.db"', f'database = "{self.db}"\n{extra_ledger}')
        open(os.path.join(work, "gateway.toml"), "w").write(text)
        open(os.path.join(work, "keys.toml"), "w").write(
            f'[services.{SERVICE}]\nsecret_keys = ["{KEY}"]\n')
        self.log_path = os.path.join(work, "gateway.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", os.path.join(work, "gateway.toml")],
            stderr=self.log, stdout=subprocess.DEVNULL)
        wait_port(self.port)

    def metrics(self):
        import urllib.request
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics").read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, value = line.rsplit(" ", 1)
                out[series] = float(value)
        return out

    def log_lines(self):
        self.log.flush()
        with open(self.log_path) as f:
            return sum(1 for _ in f)

    def ledger_bytes(self):
        return sum(os.path.getsize(p) for p in
                   [self.db, self.db + "-wal", self.db.replace(".db", ".guard.db"),
                    self.db.replace(".db", ".guard.db") + "-wal"] if os.path.exists(p))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


# --- clients --------------------------------------------------------------------------------

async def exchange(port, data, source=VALID_FROM, timeout=30):
    """Sends one Connection: close request from `source`; returns (status, body, seconds)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout)
    writer.write(data)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head else 0
    return status, body, time.perf_counter() - t0


async def valid_callback(gw, n):
    """Seconds until a valid callback from VALID_FROM was forwarded (the upstream's answer)."""
    status, body, took = await exchange(gw.port, request("/click/prepare/", prepare(n), True))
    if status != 200 or b"merchant_prepare_id" not in body:
        raise SystemExit(f"a valid callback was not forwarded: {status} {body[:200]!r}")
    return took


async def hold_keep_alive(port, source, n):
    """An HTTP/1.1 keep-alive connection with one forged callback answered, then idle."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writer.write(request("/click/prepare/", prepare(n, key="forged")))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        return writer
    except (OSError, asyncio.IncompleteReadError):
        return None


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


async def hold_idle_h2(port, source):
    """An HTTP/2 connection (prior knowledge) with one GET answered, then idle: it answers the
    gateway's PINGs, as a live client would."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        # HPACK: :method GET (2), :scheme http (6), :path / (4), :authority literal (index 1).
        block = bytes([0x82, 0x86, 0x84, 0x41, 4]) + b"shop"
        writer.write(H2_PREFACE + h2_frame(4, 0, 0) + h2_frame(1, 0x5, 1, block))
        await writer.drain()
        done = False
        while not done:
            head = await reader.readexactly(9)
            length = int.from_bytes(head[:3], "big")
            kind, flags = head[3], head[4]
            payload = await reader.readexactly(length)
            if kind == 4 and not flags & 1:
                writer.write(h2_frame(4, 1, 0))
            if kind in (0, 1) and flags & 1 and int.from_bytes(head[5:9], "big") == 1:
                done = True
            if kind == 7:
                return None
        asyncio.get_running_loop().create_task(h2_idle(reader, writer))
        return writer
    except (OSError, asyncio.IncompleteReadError):
        return None


async def h2_idle(reader, writer):
    try:
        while True:
            head = await reader.readexactly(9)
            payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
            if head[3] == 6 and not head[4] & 1:
                writer.write(h2_frame(6, 1, 0, payload))
    except (OSError, asyncio.IncompleteReadError):
        pass


async def hold_declared_body(port, source):
    """A callback declaring a 16 KiB body and sending none of it."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writer.write(b"POST /click/prepare/ HTTP/1.1\r\nHost: shop.example\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 16384\r\n\r\n")
        await writer.drain()
        return writer
    except OSError:
        return None


def addresses(count, third):
    return [f"127.{third}.{1 + i // 250}.{1 + i % 250}" for i in range(count)]


# --- scenarios ------------------------------------------------------------------------------

def emit(**fields):
    print(json.dumps(fields), flush=True)


async def burst(args):
    """2,000 clients connecting at once (16 addresses), the gateway and nginx in one run."""
    for name, port in [("click-gateway", None), ("nginx", args.nginx)]:
        gw = None
        if port is None:
            gw = Gateway(args.gateway, os.path.join(args.work, "burst"), args.upstream)
            port = gw.port
        for rnd in range(args.rounds):
            out = subprocess.run(
                [sys.executable, os.path.join(REPO, "benches", "burst.py"), "--port", str(port),
                 "--clients", "2000", "--addresses", "16"],
                capture_output=True, text=True, check=True)
            emit(scenario="burst-2000", target=name, round=rnd, **json.loads(out.stdout))
        if gw:
            gw.stop()


async def hold(args):
    """One address, or 64, holding every connection the gateway allows."""
    cases = [
        ("keep-alive, 1 address", 1, 4096, "keep"),
        ("keep-alive, 64 addresses", 64, 64, "keep"),
        ("idle HTTP/2, 1 address", 1, 4096, "h2"),
        ("idle HTTP/2, 64 addresses", 64, 64, "h2"),
        ("declared bodies, 1 address", 1, 4096, "body"),
        ("declared bodies, 64 addresses", 64, 64, "body"),
    ]
    for label, n_addresses, per_address, kind in cases:
        gw = Gateway(args.gateway, os.path.join(args.work, "hold"), args.upstream)
        quiet = [await valid_callback(gw, 1_000_000 + i) for i in range(5)]
        held, tasks, i = [], [], 0
        for source in addresses(n_addresses, 60):
            for _ in range(per_address):
                i += 1
                if kind == "keep":
                    tasks.append(hold_keep_alive(gw.port, source, i))
                elif kind == "h2":
                    tasks.append(hold_idle_h2(gw.port, source))
                else:
                    tasks.append(hold_declared_body(gw.port, source))
                if len(tasks) == 512:
                    held += await asyncio.gather(*tasks)
                    tasks = []
        held += await asyncio.gather(*tasks)
        m = gw.metrics()
        attacked = [await valid_callback(gw, 2_000_000 + i) for i in range(5)]
        emit(scenario="hold", case=label, attempted=n_addresses * per_address,
             open=m.get("click_gateway_open_connections"),
             under_pressure=m.get("click_gateway_under_pressure"),
             valid_quiet_max_s=round(max(quiet), 4), valid_attacked_max_s=round(max(attacked), 4))
        for w in held:
            if w:
                w.close()
        gw.stop()


async def flood(args):
    """A 15 s keep-alive flood of forged callbacks from one address (wrk, 16 connections from
    127.0.0.1), valid callbacks from another address every 100 ms; the same 15 s without the
    flood first."""
    results = {}
    for case in ["quiet", "flood"]:
        gw = Gateway(args.gateway, os.path.join(args.work, "flood-" + case), args.upstream)
        await valid_callback(gw, 1)
        lines0, bytes0, m0 = gw.log_lines(), gw.ledger_bytes(), gw.metrics()
        wrk = None
        if case == "flood":
            lua = os.path.join(args.work, "forged.lua")
            body = prepare(7, key="forged").decode()
            open(lua, "w").write(
                'wrk.method = "POST"\nwrk.body = "%s"\n'
                'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n' % body)
            wrk = subprocess.Popen(
                ["wrk", "-t2", "-c16", f"-d{args.flood_seconds}s", "-s", lua,
                 f"http://127.0.0.1:{gw.port}/click/prepare/"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        start, times, n = time.perf_counter(), [], 100
        while time.perf_counter() - start < args.flood_seconds:
            times.append(await valid_callback(gw, n))
            n += 1
            await asyncio.sleep(0.1)
        forged = None
        if wrk:
            out = wrk.communicate()[0]
            match = re.search(r"(\d+) requests in", out)
            forged = int(match.group(1)) if match else None
        elapsed = time.perf_counter() - start
        # Give the writer its last commit and the summaries their interval.
        await asyncio.sleep(11)
        m = gw.metrics()
        rows = recorded(gw.db, VALID_FROM)
        results[case] = dict(
            forged_sent=forged, valid_sent=len(times), valid_recorded=rows,
            valid_max_s=round(max(times), 4), valid_p50_s=round(sorted(times)[len(times) // 2], 4),
            log_lines_per_s=round((gw.log_lines() - lines0) / elapsed, 2),
            ledger_growth_mib=round((gw.ledger_bytes() - bytes0) / 2**20, 2),
            unrecorded=m.get('click_gateway_ledger_unrecorded_total{reason="rate"}', 0.0),
            unlogged=m.get("click_gateway_refusals_unlogged_total", 0.0) - m0.get(
                "click_gateway_refusals_unlogged_total", 0.0))
        gw.stop()
    emit(scenario="forged-flood-15s", **{f"{k}_{case}": v for case, r in results.items()
                                         for k, v in r.items()})


def recorded(db, client):
    """The ledger's rows from `client`, read with Python's own SQLite, read-only (the gateway
    writes on)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM callbacks WHERE client = ?",
                            (client,)).fetchone()[0]
    finally:
        conn.close()


async def outage(args):
    """An outage at Click's pace: 30 refused callbacks a second from one address, 300 in all
    (a service whose key the gateway lacks), then `recheck` with the key."""
    gw = Gateway(args.gateway, os.path.join(args.work, "outage"), args.upstream)
    start = time.perf_counter()
    for i in range(300):
        status, body, _ = await exchange(
            gw.port, request("/click/prepare/", prepare(9000 + i, key="key-of-82154",
                                                        service="82154"), True), source="127.0.98.1")
        if b'"error":-1' not in body:
            raise SystemExit(f"an outage callback was not refused: {body!r}")
        await asyncio.sleep(max(0.0, start + (i + 1) / 30 - time.perf_counter()))
    await asyncio.sleep(1)
    rows = recorded(gw.db, "127.0.98.1")
    recheck = subprocess.run(
        [args.gateway, "recheck", "--config", os.path.join(gw.work, "gateway.toml"),
         "--service-id", "82154", "--secret-file", "-"],
        input="key-of-82154\n", capture_output=True, text=True)
    found = re.search(r"(\d+) of (\d+) refused callbacks", recheck.stdout)
    emit(scenario="outage-30-per-s", sent=300, seconds=round(time.perf_counter() - start, 1),
         recorded=rows, recheck_verifies=found.group(0) if found else recheck.stdout)
    gw.stop()


async def disk(args):
    """Forged 16 KiB callbacks from 16 addresses against a ledger on a 256 MiB tmpfs (with
    ledger.min_free = 64MiB), then valid callbacks."""
    mnt = os.path.join(args.work, "small-disk")
    os.makedirs(mnt, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", mnt], check=True)
    try:
        gw = Gateway(args.gateway, mnt, args.upstream, extra_ledger='min_free = "64MiB"')
        big = [prepare(50_000 + i, key="forged", pad=16_000) for i in range(16)]

        async def flood_from(source, body, seconds):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port,
                                                           local_addr=(source, 0))
            end = time.perf_counter() + seconds
            sent = 0
            while time.perf_counter() < end:
                writer.write(request("/click/prepare/", body))
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
                await reader.readexactly(length)
                sent += 1
            writer.close()
            return sent

        sent = await asyncio.gather(*(flood_from(s, b, 20) for s, b in
                                      zip(addresses(16, 97), big)))
        st = os.statvfs(mnt)
        free = st.f_bavail * st.f_frsize
        after = [await valid_callback(gw, 3_000_000 + i) for i in range(10)]
        m = gw.metrics()
        emit(scenario="disk-16KiB-flood", forged_sent=sum(sent), disk_mib=256,
             free_after_mib=round(free / 2**20, 1),
             unrecorded_size=m.get('click_gateway_ledger_unrecorded_total{reason="size"}', 0.0),
             valid_after_max_s=round(max(after), 4))
        gw.stop()
    finally:
        subprocess.run(["umount", "-l", mnt])


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gateway", required=True)
    p.add_argument("--upstream", type=int, required=True)
    p.add_argument("--nginx", type=int, required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--flood-seconds", type=int, default=15)
    p.add_argument("--scenarios", default="burst,hold,flood,outage,disk")
    args = p.parse_args()
    for name in args.scenarios.split(","):
        await globals()[name](args)


if __name__ == "__main__":
    asyncio.run(main())
