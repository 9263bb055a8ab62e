"""``medmm serve`` under a bounded local load: throughput, latency, errors and memory.

A tabular-risk run (MLP on the scikit-learn breast-cancer table; ``--task text-cls`` uses a
MiniLM-L6 run on synthetic notes) is trained for a few steps and exported; ``medmm serve``
starts on a free 127.0.0.1 port in a subprocess, and a concurrent client (httpx, ``--concurrency``
connections) sends ``--requests`` POST /predict requests of one row each, one in twenty of them
malformed (wrong field, wrong type, broken JSON, or over the body limit) — those must get a 4xx
and the service must keep serving. Prints requests/s, p50/p99 latency of the valid requests,
errors, and the server's resident memory before and after.

    python bench/serve.py [--requests 2000] [--concurrency 16] [--task tabular-risk]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.onnx_predict import make_run
from medmm.cli import _registry

LIMIT_MB = 0.05


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rows_for(task: str, work: Path) -> list[dict[str, Any]]:
    import pandas as pd

    if task == "tabular-risk":
        df = pd.read_csv(work / "bc.csv").drop(columns=["target"])
    else:
        df = pd.read_csv(work / "notes.csv")[["note_id", "text"]]
    return json.loads(df.to_json(orient="records"))


def bad_request(i: int, task: str) -> bytes:
    kind = i % 4
    if kind == 0:
        return b'{"rows": [{"broken": '
    if kind == 1:
        return json.dumps({"rows": [{"unknown_column": 1}]}).encode()
    if kind == 2:
        return json.dumps({"rows": [{"text" if task == "text-cls" else "mean_radius": {"nested": 1}}]}).encode()
    return json.dumps({"rows": [{"text": "x" * int(LIMIT_MB * 1024 * 1024 + 10)}]}).encode()


async def load(base: str, rows: list[dict[str, Any]], n: int, concurrency: int, task: str,
               timeout: float) -> tuple[list[float], int, int, int, float]:
    import httpx

    latencies: list[float] = []
    errors = bad_ok = bad_total = 0
    counter = iter(range(n))
    start = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, bad_ok, bad_total
        for i in counter:
            malformed = i % 20 == 19
            body = bad_request(i // 20, task) if malformed else json.dumps({"rows": [rows[i % len(rows)]]}).encode()
            t0 = time.perf_counter()
            try:
                r = await client.post(f"{base}/predict", content=body, headers={"Content-Type": "application/json"})
                status = r.status_code
            except httpx.HTTPError:
                status = -1
            if malformed:
                bad_total += 1
                bad_ok += 400 <= status < 500
            elif status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(concurrency))), timeout=timeout)
    return latencies, errors, bad_ok, bad_total, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--task", default="tabular-risk", choices=["tabular-risk", "text-cls"])
    parser.add_argument("--timeout", type=float, default=600, help="bound on the whole load, seconds")
    args = parser.parse_args()
    from medmm.deploy.export import export_run

    with tempfile.TemporaryDirectory(prefix="medmm-bench-serve-") as tmp:
        work = Path(tmp)
        run = make_run(args.task, work)
        export = export_run(run, work / "export", registry=_registry(), quiet=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = (work / "serve.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "medmm", "serve", str(export), "--port", str(port),
                                 "--max-body-mb", str(LIMIT_MB)], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        base = f"http://127.0.0.1:{port}"
        try:
            import httpx

            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start:\n" + (work / "serve.log").read_text()[-2000:])
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            rows = rows_for(args.task, work)
            asyncio.run(load(base, rows, min(100, args.requests), args.concurrency, args.task, args.timeout))  # warm-up
            before = rss_mb(proc.pid)
            lat, errors, bad_ok, bad_total, wall = asyncio.run(
                load(base, rows, args.requests, args.concurrency, args.task, args.timeout))
            after = rss_mb(proc.pid)
            alive = httpx.get(f"{base}/health", timeout=5).status_code == 200
        finally:
            proc.kill()
            proc.wait(timeout=30)
            log.close()
        ms = np.asarray(lat) * 1000
        print(f"\nmedmm serve ({args.task}, onnxruntime) on 127.0.0.1: {args.requests} requests, "
              f"{args.concurrency} concurrent connections")
        print(f"  throughput      {args.requests / wall:.0f} requests/s ({wall:.1f} s)")
        print(f"  latency (valid) p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms "
              f"over {len(ms)} requests")
        print(f"  errors          {errors} on valid requests; {bad_ok}/{bad_total} malformed requests got a 4xx")
        print(f"  server RSS      {before:.0f} MB before, {after:.0f} MB after ({after - before:+.0f} MB); "
              f"healthy after: {alive}")


if __name__ == "__main__":
    main()
