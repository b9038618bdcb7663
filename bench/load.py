"""Load generator, run as its own process: `python -m bench.load < SPEC_JSON`.

asyncio over raw keep-alive HTTP/1.1 sockets, so the client spends little CPU
on a machine it shares with the server. Prints one JSON object of results.

SPEC: {"url", "path", "headers": {...}, "body": str, "concurrency", "requests",
       "idempotency": "none" | "fresh" | "<fixed key>", "bodies": [str, ...] (optional:
       request n sends bodies[n], instead of `body` every time)}
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from urllib.parse import urlsplit


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def worker(spec: dict, host: str, port: int, counter: list[int], latencies: list[float], statuses: dict):
    reader, writer = await asyncio.open_connection(host, port)
    bodies = [b.encode() for b in spec.get("bodies", [])]
    body = spec["body"].encode()
    fixed = [f"{k}: {v}" for k, v in spec["headers"].items()]
    try:
        while counter[0] < spec["requests"]:
            if bodies:
                body = bodies[counter[0] % len(bodies)]
            counter[0] += 1
            headers = list(fixed)
            if spec["idempotency"] == "fresh":
                headers.append(f"Idempotency-Key: {uuid.uuid4()}")
            elif spec["idempotency"] != "none":
                headers.append(f"Idempotency-Key: {spec['idempotency']}")
            request = (
                f"POST {spec['path']} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                + "".join(h + "\r\n" for h in headers)
                + "\r\n"
            ).encode() + body
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def run(spec: dict) -> dict:
    parts = urlsplit(spec["url"])
    counter, latencies, statuses = [0], [], {}
    started = time.perf_counter()
    await asyncio.gather(
        *(worker(spec, parts.hostname, parts.port, counter, latencies, statuses) for _ in range(spec["concurrency"]))
    )
    seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "rps": len(latencies) / seconds,
        "p50": percentile(ordered, 50) * 1000,
        "p95": percentile(ordered, 95) * 1000,
        "p99": percentile(ordered, 99) * 1000,
        "statuses": statuses,
    }


if __name__ == "__main__":
    # The spec on stdin: with a body per request it is far over the argument-list limit.
    print(json.dumps(asyncio.run(run(json.load(sys.stdin)))))
