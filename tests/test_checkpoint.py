"""Checkpoints and resume (docs/checkpoints.md): a `msrec train` process SIGKILLed during a checkpoint write,
during validation and mid-epoch, resumed with --resume each time, ends bit-identical to an uninterrupted run
(weights and metrics.json but its timings); a checkpoint is never half-written; a checkpoint of another config
or data is refused naming the difference; an interrupted run without --resume is an error that says what to do."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.csv as pacsv
import pytest
import torch
import yaml
from safetensors.torch import load_file

import msrec
from msrec.errors import MsrecError
from msrec.runs import checkpoint_dir, checkpoint_files
from msrec.train.checkpoint import WRITE_SLEEP_ENV

STEPS = 24  # 2,400 training rows / batch 100
TIMINGS = ("seconds", "samples_per_second")


def _config(synthetic_config, **train) -> dict:
    return synthetic_config(model={"name": "dnn", "embed_dim": 8, "hidden": [32, 16]},
                            train={"epochs": 3, "batch_size": 100, "patience": 5,
                                   "checkpoint": {"every_steps": 4, "keep": 2}, **train})


def _strip_timings(metrics: dict) -> dict:
    train = {k: v for k, v in metrics["train"].items() if k not in TIMINGS}
    train["history"] = [{k: v for k, v in row.items() if k not in TIMINGS} for row in train["history"]]
    return {**metrics, "train": train}


def _same_run(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert _strip_timings(ma) == _strip_timings(mb)


def _steps(out: Path) -> list[int]:
    return [int(p.name.split(".")[0]) for p in checkpoint_files(out)]


def _wait(proc: subprocess.Popen, until, timeout: float = 60) -> bool:
    """Poll until `until()` holds (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the training process")


def _launch(config: Path, out: Path, sleep: float) -> subprocess.Popen:
    env = {**os.environ, WRITE_SLEEP_ENV: str(sleep)}
    return subprocess.Popen([sys.executable, "-m", "msrec", "train", str(config), "--out", str(out), "--resume"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkilled_run_resumes_bit_identical(synthetic_config, tmp_path):
    cfg = _config(synthetic_config)
    ref = msrec.train(cfg, out=tmp_path / "ref", console=None).run_dir
    assert not checkpoint_dir(ref).exists()  # removed once the run is written
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    folder = checkpoint_dir(out)
    rng = random.Random(os.getpid())

    # 1. during a checkpoint write: the temp file is there, not yet renamed
    proc = _launch(config, out, sleep=0.5)
    assert _wait(proc, lambda: folder.is_dir() and any(folder.glob(".*.tmp")) and _steps(out))
    _kill(proc)
    assert any(folder.glob(".*.tmp")), "the kill should have landed inside a write"
    assert all(p.name.endswith(".ckpt") for p in checkpoint_files(out))  # the loader lists no temp file
    before = _steps(out)
    # 2. during validation: right after the epoch's last step was checkpointed
    proc = _launch(config, out, sleep=0.02)
    assert _wait(proc, lambda: max(_steps(out)) >= STEPS)
    _kill(proc)
    assert max(_steps(out)) >= max(before)
    assert not (out / "metrics.json").exists()
    # 3. mid-epoch, at a random moment after a new checkpoint
    proc = _launch(config, out, sleep=0.02)
    done = max(_steps(out))
    assert _wait(proc, lambda: max(_steps(out)) > done)
    time.sleep(rng.uniform(0, 0.05))
    _kill(proc)
    assert len(checkpoint_files(out)) <= 2  # pruned to `keep`
    # 4. to the end (from the newest checkpoint)
    assert checkpoint_files(out)
    proc = _launch(config, out, sleep=0)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert not folder.exists()
    _same_run(ref, out)


def test_in_process_resume_from_every_kept_checkpoint_is_identical(synthetic_config, tmp_path):
    """Resume from checkpoints at a mid-epoch step and at an epoch's end (keep_after keeps them)."""
    cfg = _config(synthetic_config, checkpoint={"every_steps": 10, "keep": 10, "keep_after": True})
    ref = msrec.train(cfg, out=tmp_path / "ref").run_dir
    saved = checkpoint_files(ref)
    assert [int(p.name.split(".")[0]) for p in saved] == [10, 20, 30, 40, 50, 60, 70]
    for keep in ([10, 20, 30], [10, 20, 30, 40, 50]):  # newest: mid-epoch 1 / mid-epoch 3 after validation
        out = tmp_path / f"resumed-{len(keep)}"
        folder = checkpoint_dir(out)
        folder.mkdir()
        for p in saved:
            if int(p.name.split(".")[0]) in keep:
                shutil.copytree(p, folder / p.name)
        (folder / f".{99:012d}.ckpt.1.tmp").write_bytes(b"half a checkpoint")  # a killed write: ignored
        result = msrec.train(cfg, out=out, resume=True)
        assert result.metrics["train"]["epochs"] == 3
        _same_run(ref, out)
        assert checkpoint_files(out)  # keep_after


def _interrupted(synthetic_config, tmp_path: Path, cfg: dict) -> Path:
    """An interrupted run: checkpoints beside `out`, no run directory."""
    ref = msrec.train(cfg, out=tmp_path / "x", console=None).run_dir
    out = tmp_path / "out"
    checkpoint_dir(ref).rename(checkpoint_dir(out))
    return out


def test_interrupted_run_without_resume_is_an_error(synthetic_config, tmp_path):
    cfg = _config(synthetic_config, epochs=1, checkpoint={"every_steps": 5, "keep_after": True})
    out = _interrupted(synthetic_config, tmp_path, cfg)
    with pytest.raises(MsrecError, match="interrupted run.*--resume.*--overwrite"):
        msrec.train(cfg, out=out)
    msrec.train(cfg, out=out, overwrite=True)  # starts over
    assert (out / "metrics.json").is_file()


def test_checkpoint_of_another_config_or_data_is_refused(synthetic_config, synthetic_csv, tmp_path):
    cfg = _config(synthetic_config, epochs=1, checkpoint={"every_steps": 5, "keep_after": True})
    out = _interrupted(synthetic_config, tmp_path, cfg)
    other = _config(synthetic_config, epochs=1, lr=0.01, checkpoint={"every_steps": 7})
    with pytest.raises(MsrecError, match=r"different config or data: `train.lr` \(checkpoint: 0.001, now: 0.01\)"):
        msrec.train(other, out=out, resume=True)
    # the same config over other data (same path, fewer rows)
    path = tmp_path / "data.csv"
    table = pacsv.read_csv(synthetic_csv)
    pacsv.write_csv(table, path)
    cfg = _config(synthetic_config, epochs=1, checkpoint={"every_steps": 5, "keep_after": True})
    cfg["data"]["train"] = str(path)
    out = _interrupted(synthetic_config, tmp_path / "b", cfg)
    pacsv.write_csv(table.slice(0, 2000), path)
    with pytest.raises(MsrecError, match=r"`data_fingerprint\.rows\.train` \(checkpoint: 2400, now: 1600\)"):
        msrec.train(cfg, out=out, resume=True)


def test_resume_without_checkpoint_trains_from_the_start(synthetic_config, tmp_path):
    cfg = _config(synthetic_config, epochs=1)
    result = msrec.train(cfg, out=tmp_path / "out", resume=True)
    assert (result.run_dir / "metrics.json").is_file()
    with pytest.raises(MsrecError, match="finished run, nothing to resume"):
        msrec.train(cfg, out=tmp_path / "out", resume=True)


def test_streaming_run_resumes_from_a_mid_epoch_checkpoint(tmp_path):
    """A ParquetStream draws its row-group order and every buffer shuffle from the batch-order generator: from
    the epoch's starting generator state, skipping the steps done reproduces the stream (the checkpoints kept by
    a finished run are exactly the files a kill leaves behind)."""
    import pyarrow.parquet as pq

    from msrec.data.datasets import synthetic

    table = synthetic.generate(rows=8_000, seed=3)
    (tmp_path / "train").mkdir()
    pq.write_table(table.slice(0, 3_000), tmp_path / "train" / "a.parquet", row_group_size=1_000)
    pq.write_table(table.slice(3_000, 3_000), tmp_path / "train" / "b.parquet", row_group_size=700)
    pq.write_table(table.slice(6_000, 1_000), tmp_path / "val.parquet")
    pq.write_table(table.slice(7_000), tmp_path / "test.parquet")
    cfg = {"data": {"sparse": ["user_id", "item_id", "user_group", "item_category"],
                    "dense": ["user_activity", "item_price"], "scenario": "scenario", "labels": ["click"],
                    "train": str(tmp_path / "train"), "val": str(tmp_path / "val.parquet"),
                    "test": str(tmp_path / "test.parquet"), "streaming": True, "shuffle_buffer": 2_500},
           "model": {"name": "dnn", "embed_dim": 8, "hidden": [32]},
           "train": {"epochs": 2, "batch_size": 250, "progress": False, "seed": 5,
                     "checkpoint": {"every_steps": 10, "keep": 10, "keep_after": True}}}
    ref = msrec.train(cfg, out=tmp_path / "ref")
    saved = checkpoint_files(ref.run_dir)
    for newest in (10, 30):  # mid-epoch 1 (row groups and the buffer part-read), mid-epoch 2
        out = tmp_path / f"resumed-{newest}"
        checkpoint_dir(out).mkdir()
        src = next(p for p in saved if int(p.name.split(".")[0]) == newest)
        shutil.copytree(src, checkpoint_dir(out) / src.name)
        result = msrec.train(cfg, out=out, resume=True)
        a, b = (r.metrics["test"]["overall"]["auc"] for r in (ref, result))
        assert abs(a - b) < 1e-4
        _same_run(ref.run_dir, out)  # in fact bit-identical


def test_cli_interrupted_run_says_how_to_resume(synthetic_config, cli, tmp_path):
    cfg = _config(synthetic_config, epochs=1, checkpoint={"every_steps": 5, "keep_after": True})
    out = _interrupted(synthetic_config, tmp_path, cfg)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = cli("train", config, "--out", out)
    assert result.code != 0 and not out.exists()
    message = " ".join((result.stdout + result.stderr).split())
    assert "interrupted run" in message and "--resume" in message and "--overwrite" in message
    result = cli("train", config, "--out", out, "--resume")
    assert result.code == 0, result.stderr
    assert (out / "metrics.json").is_file()
