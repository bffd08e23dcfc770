#!/usr/bin/env python3
"""The dispatch bench's anchor: the same workloads through a NATS queue group.

worker NAME COST_MS: subscribes to the subject in queue group "workers" and answers each
    request with NAME after COST_MS milliseconds, up to 64 at once (as a collaborator's
    maximumConcurrentRequests); more wait in the client.
driver: sends REQUESTS requests, CONCURRENCY at a time, and prints one JSON line in the shape
    of `securemsg bench dispatch`: the share per worker, latency percentiles, failures.

Both connect over mutual TLS (--cert, --key, --ca) to --server. Used by
scripts/dispatch-bench.sh; needs nats-py.
"""
import argparse
import asyncio
import json
import os
import signal
import ssl
import time

import nats
from nats.errors import NoRespondersError, TimeoutError


def tls_context(args):
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
    context.load_cert_chain(args.cert, args.key)
    return context


async def worker(args):
    nc = await nats.connect(args.server, tls=tls_context(args), tls_hostname="localhost", name=args.name)
    cost = args.cost_ms / 1000.0
    answer = args.name.encode()

    slots = asyncio.Semaphore(64)
    tasks = set()

    async def handle(msg):
        async with slots:
            if cost > 0:
                await asyncio.sleep(cost)
            await msg.respond(answer)

    async def receive(msg):
        # nats-py runs a subscription's callback one message at a time: each gets a task.
        task = asyncio.create_task(handle(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await nc.subscribe(args.subject, queue="workers", cb=receive, pending_msgs_limit=1_000_000)
    await nc.flush()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await nc.drain()


async def driver(args):
    nc = await nats.connect(args.server, tls=tls_context(args), tls_hostname="localhost", name="driver")
    share, failures, latencies = {}, {}, []
    state = {"next": 0, "done": 0, "killed": False}
    timeout = args.timeout_ms / 1000.0

    async def one_worker():
        while True:
            index = state["next"]
            state["next"] += 1
            if index >= args.requests:
                return
            began = time.perf_counter()
            try:
                reply = await nc.request(args.subject, index.to_bytes(8, "big"), timeout=timeout)
                latencies.append(time.perf_counter() - began)
                name = reply.data.decode()
                share[name] = share.get(name, 0) + 1
            except TimeoutError:
                failures["TIMEOUT"] = failures.get("TIMEOUT", 0) + 1
            except NoRespondersError:
                failures["NO_RESPONDERS"] = failures.get("NO_RESPONDERS", 0) + 1
            state["done"] += 1
            if args.kill_pid and not state["killed"] and state["done"] >= args.kill_after:
                state["killed"] = True
                os.kill(args.kill_pid, signal.SIGKILL)

    started = time.perf_counter()
    await asyncio.gather(*(one_worker() for _ in range(min(args.concurrency, args.requests))))
    seconds = time.perf_counter() - started
    await nc.close()
    latencies.sort()

    def percentile(p):
        if not latencies:
            return 0
        index = min(len(latencies) - 1, max(0, int(-(-len(latencies) * p // 1)) - 1))
        return latencies[index] * 1000

    counts = list(share.values())
    print(json.dumps({
        "workload": "nats-queue-group", "requests": args.requests, "concurrency": args.concurrency,
        "answered": len(latencies), "failures": failures, "share": dict(sorted(share.items())),
        "max_min_share": (max(counts) / min(counts)) if counts and min(counts) > 0 else 0,
        "p50_ms": percentile(0.5), "p99_ms": percentile(0.99), "max_ms": percentile(1.0),
        "duration_s": seconds, "per_s": args.requests / seconds,
    }), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["worker", "driver"])
    parser.add_argument("--server", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--subject", default="work")
    parser.add_argument("--name", default="worker")
    parser.add_argument("--cost-ms", type=float, default=0)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout-ms", type=int, default=10_000)
    parser.add_argument("--kill-after", type=int, default=0)
    parser.add_argument("--kill-pid", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(worker(args) if args.mode == "worker" else driver(args))


if __name__ == "__main__":
    main()
