"""Load test of the scoring service: `msrec serve` on loopback in a subprocess, requests from this process.

Phases (each a bounded number of requests, fixed in advance):
- single:         one record per request, one client after another;
- batch100:       100 records per request, one client;
- single-conc8:   one record per request, 8 concurrent clients (one keep-alive connection each);
- batch100-conc4: 100 records per request, 4 concurrent clients.
Each phase reports requests/s, records/s and the p50 / p99 latency of a request as the client sees it
(send to complete answer). Every answer is checked: status 200 and one score row per record.

Without --run, a run is trained first (1 epoch on synthetic data) in a temporary folder. Records are raw
rows of the same synthetic generator with another seed (so some ids are unknown to the encoder).

    python benchmarks/serve_load.py [--run RUN_DIR] [--model star] [--requests 400] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_run(model: str, rows: int, out: Path) -> Path:
    import msrec

    config = {"data": {"dataset": "synthetic", "options": {"rows": rows, "seed": 0}},
              "model": {"name": model}, "train": {"epochs": 1, "progress": False}}
    return msrec.train(config, out=out).run_dir


def request_records(n: int) -> list[dict]:
    from msrec.data.datasets.synthetic import generate

    table = generate(rows=n, seed=1)
    keep = [c for c in table.column_names if c not in ("click", "conversion") and not c.startswith("p_")]
    return table.select(keep).to_pylist()


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with code {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the service did not become ready")


def client(port: int, bodies: list[tuple[bytes, int]], latencies: list[float], errors: list[str]) -> None:
    """Send `bodies` one after another over one keep-alive connection; record each request's latency."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"content-type": "application/json"}
    for body, n in bodies:
        t0 = time.perf_counter()
        conn.request("POST", "/predict", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        latencies.append(time.perf_counter() - t0)
        if resp.status != 200 or len(json.loads(data)["scores"]) != n:
            errors.append(f"{resp.status}: {data[:200]!r}")
    conn.close()


def run_phase(port: int, records: list[dict], per_request: int, requests: int, concurrency: int) -> dict:
    bodies = []
    for k in range(requests):
        start = (k * per_request) % (len(records) - per_request)
        bodies.append((json.dumps(records[start:start + per_request]).encode(), per_request))
    shares = [bodies[i::concurrency] for i in range(concurrency)]
    latencies: list[float] = []
    errors: list[str] = []
    threads = [threading.Thread(target=client, args=(port, share, latencies, errors)) for share in shares]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, first: {errors[0]}")
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"requests": requests, "records": requests * per_request, "concurrency": concurrency,
            "seconds": wall, "req_per_s": requests / wall, "records_per_s": requests * per_request / wall,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * q[98]}


def markdown(results: dict[str, dict], model: str, command: str) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = (f"Model `{model}`; {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
               f"Python {platform.python_version()}; service and client on the same machine (loopback); "
               f"load average at the end {load} (other jobs shared the cores).")
    lines = [machine, "",
             f"Command: `{command}`", "",
             "| phase | requests | records/request | clients | requests/s | records/s | p50 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['requests']} | {r['records'] // r['requests']} | {r['concurrency']} | "
                     f"{r['req_per_s']:.0f} | {r['records_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="Run directory to serve (default: train one)")
    ap.add_argument("--model", default="star", help="Model to train when --run is not given")
    ap.add_argument("--train-rows", type=int, default=50_000)
    ap.add_argument("--requests", type=int, default=400, help="Single-record requests per phase "
                                                             "(batch phases send a quarter as many)")
    ap.add_argument("--markdown", type=Path, help="Also write the result table here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or train_run(args.model, args.train_rows, Path(tmp) / "run")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "msrec", "serve", str(run_dir), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_ready(port, server)
            records = request_records(20_000)
            model = json.loads(_get(port, "/metadata"))["model"]
            run_phase(port, records, 100, 10, 1)  # warm-up, not reported
            n, nb = args.requests, max(1, args.requests // 4)
            results = {"single": run_phase(port, records, 1, n, 1),
                       "batch100": run_phase(port, records, 100, nb, 1),
                       "single-conc8": run_phase(port, records, 1, n, 8),
                       "batch100-conc4": run_phase(port, records, 100, nb, 4)}
        finally:
            server.terminate()
            server.wait(timeout=30)
    command = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])
    table = markdown(results, model, command.strip())
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    return conn.getresponse().read()


if __name__ == "__main__":
    main()
