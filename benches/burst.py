#!/usr/bin/env python3
"""A burst of new clients at once: N connections opened together, spread over several source
addresses of 127.0.0.0/8 (each stands in for another machine), each sending one request and
reading its answer. Prints one line of JSON: how long until every client was answered, the
slowest connect (a dropped SYN costs a client a 1 s retransmission), and the answers by status.

    benches/burst.py --port 8080 [--clients 2000] [--addresses 16] [--path / | --body FILE]
"""
import argparse
import asyncio
import json
import socket
import time


async def one_client(source, port, request, connects, results):
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0)
        )
    except OSError as e:
        results.append(("connect_error:" + type(e).__name__, time.perf_counter() - t0))
        return
    connects.append(time.perf_counter() - t0)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n")
        status = head.split(b" ")[1].decode()
        await reader.read()  # Connection: close
        results.append((status, time.perf_counter() - t0))
    except (OSError, asyncio.IncompleteReadError, IndexError) as e:
        results.append(("error:" + type(e).__name__, time.perf_counter() - t0))
    finally:
        writer.close()


async def burst(args):
    if args.body:
        body = open(args.body, "rb").read().strip()
        request = (
            f"POST {args.path} HTTP/1.1\r\nHost: shop.example\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
    else:
        request = f"GET {args.path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    sources = [f"127.0.{10 + i // 250}.{1 + i % 250}" for i in range(args.addresses)]
    connects, results = [], []
    start = time.perf_counter()
    await asyncio.gather(
        *(
            one_client(sources[i % len(sources)], args.port, request, connects, results)
            for i in range(args.clients)
        )
    )
    elapsed = time.perf_counter() - start
    statuses = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    print(
        json.dumps(
            {
                "clients": args.clients,
                "addresses": len(sources),
                "all_answered_s": round(elapsed, 3),
                "slowest_connect_s": round(max(connects, default=0.0), 3),
                "connects_over_1s": sum(1 for c in connects if c >= 1.0),
                "statuses": statuses,
            }
        )
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--addresses", type=int, default=16)
    p.add_argument("--path", default="/")
    p.add_argument("--body")
    args = p.parse_args()
    asyncio.run(burst(args))


if __name__ == "__main__":
    main()
