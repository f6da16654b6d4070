"""A 10^7-id model end to end (issue 12): train, predict, export (TorchScript and ONNX), serve; scores agree.

    python benchmarks/large_model.py                       # 10^7 ids (5M users + 5M items hashed), embed_dim 32
    python benchmarks/large_model.py --ids 100000 --rows 20000 --embed-dim 8   # a quick run of the same steps

The id columns are hashed (`data.hash_buckets`), so the table has `--ids` rows however many the training rows
hold; embed_dim 32 makes it 1.2 GiB at 10^7 ids, past `EXTERNAL_DATA_BYTES`, so the ONNX file keeps its weights
in `model.onnx.data`. Each step runs in a child process, for its own wall time and peak RSS:
`msrec predict` of the test rows; `msrec export` to `.onnx` and `.pt`; onnxruntime over the same rows
(`InputEncoder` + `ExportedModel`); `msrec serve`: seconds until `/health` answers, its RSS then, and the
scores of `/predict` for the first 1,000 test rows. Printed: the table's bytes, each step's seconds and peak
RSS, and the largest absolute difference of every path's scores from `msrec predict`'s (goal < 1e-5).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

SCHEMA = {"sparse": ["user_id", "item_id", "user_group", "item_category"], "dense": ["user_activity", "item_price"],
          "scenario": "scenario", "labels": ["click"]}
MSREC = [sys.executable, "-m", "msrec"]
TIME = ["/usr/bin/time", "-f", "%e %M"]  # wall seconds, peak RSS KiB


def timed(args: list[str], log: Path) -> tuple[float, float]:
    """Runs a command; (wall seconds, peak RSS MiB)."""
    with open(log, "w") as err:
        subprocess.run(TIME + args, check=True, stdout=subprocess.DEVNULL, stderr=err)
    seconds, kib = log.read_text().strip().splitlines()[-1].split()
    return float(seconds), int(kib) / 1024


def scores_of(path: Path) -> list[float]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["score_click"]).column(0).to_pylist()


def onnx_scores(run: Path, model: Path, rows: Path, out: Path) -> None:
    """onnxruntime over the rows, encoded by the run's own encoder (what a deployer without msrec's model does)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from msrec.serve.export import ExportedModel
    from msrec.serve.inputs import InputEncoder

    inputs = InputEncoder(run).encode(pq.read_table(rows))
    scores = ExportedModel(model)(*(torch.from_numpy(v) for v in inputs.values()))[1]
    pq.write_table(pa.table({"score_click": scores[:, 0].numpy()}), out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(run: Path, rows: Path, limit: int) -> tuple[float, float, list[float]]:
    """`msrec serve`: seconds until /health answers, RSS MiB then, and /predict's scores of the first rows."""
    import pyarrow.parquet as pq

    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([*MSREC, "serve", str(run), "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit("msrec serve exited") from None
                time.sleep(0.2)
        seconds = time.perf_counter() - start
        rss = int(next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS")).split()[1]) / 1024
        records = pq.read_table(rows).slice(0, limit).to_pylist()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=json.dumps(records).encode(),
                                         headers={"Content-Type": "application/json"})
        body = json.loads(urllib.request.urlopen(request, timeout=600).read())
        return seconds, rss, [row[0] for row in body["scores"]]
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=10_000_000)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--embed-dim", type=int, default=32)
    parser.add_argument("--serve-rows", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/large_model"))
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from msrec.data.datasets import synthetic

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_file, test_file = out / "train.parquet", out / "test.parquet"
    half = args.ids // 2
    data = synthetic.generate(rows=args.rows + 10_000, users=half, items=half)
    pq.write_table(data.slice(0, args.rows), train_file)
    pq.write_table(data.slice(args.rows).drop_columns(["click", "p_click"]), test_file)
    config = {"data": {"train": str(train_file.resolve()), **SCHEMA, "hash_buckets": {"user_id": half, "item_id": half}},
              "model": {"name": "dnn", "embed_dim": args.embed_dim},
              "train": {"epochs": 1, "batch_size": 4096, "progress": False, "threads": 1}}
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    run = out / "run"
    table_mib = (args.ids + 2 + 64) * args.embed_dim * 4 / 2**20  # + the small columns' rows
    steps = {"train": timed([*MSREC, "train", str(out / "config.yaml"), "--out", str(run), "--overwrite"],
                            out / "train.log")}
    steps["predict"] = timed([*MSREC, "predict", str(run), str(test_file), str(out / "predict.parquet")],
                             out / "predict.log")
    for suffix in ("onnx", "pt"):
        steps[f"export {suffix}"] = timed([*MSREC, "export", str(run), "--out", str(out / f"model.{suffix}")],
                                          out / f"export-{suffix}.log")
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import large_model as m; "
            f"from pathlib import Path; m.onnx_scores(Path({str(run)!r}), Path({str(out / 'model.onnx')!r}), "
            f"Path({str(test_file)!r}), Path({str(out / 'onnx.parquet')!r}))")
    steps["onnxruntime"] = timed([sys.executable, "-c", code], out / "onnx.log")
    serve_seconds, serve_rss, served = serve(run, test_file, args.serve_rows)

    reference = scores_of(out / "predict.parquet")
    diff = {"onnxruntime": max(abs(a - b) for a, b in zip(scores_of(out / "onnx.parquet"), reference, strict=True)),
            "serve /predict": max(abs(a - b) for a, b in zip(served, reference, strict=False))}
    files = {p.name: p.stat().st_size / 2**20 for p in sorted(out.glob("model.*"))}
    print(f"ids {args.ids:,}  embed_dim {args.embed_dim}  table {table_mib:,.0f} MiB  training rows {args.rows:,}  "
          f"test rows {len(reference):,}  ({os.cpu_count()} CPUs)")
    print("| step | seconds | peak RSS MiB |\n|---|---:|---:|")
    for name, (seconds, rss) in steps.items():
        print(f"| {name} | {seconds:.1f} | {rss:,.0f} |")
    print(f"| serve (until /health answers; RSS then) | {serve_seconds:.1f} | {serve_rss:,.0f} |")
    print("files: " + ", ".join(f"{name} {mib:,.0f} MiB" for name, mib in files.items()))
    print("largest |score - msrec predict's|: " + ", ".join(f"{k} {v:.2e}" for k, v in diff.items()))


if __name__ == "__main__":
    main()
