"""Checkpoints and resume (docs/checkpoints.md): a `msrec train` job SIGKILLed during a checkpoint write, during
validation and mid-epoch, resumed with --resume each time, ends as an uninterrupted run: bit-identical (weights and
metrics.json but its timings) for one process from memory, test AUC within 1e-4 for a Parquet stream and for 2 ranks
(torchrun, gloo); a checkpoint is never half-written; a checkpoint of another config or data is refused naming the
difference; an interrupted run without --resume is an error that says what to do."""

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
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

import msrec
from msrec.errors import MsrecError
from msrec.runs import checkpoint_dir, checkpoint_files
from msrec.train.checkpoint import WRITE_SLEEP_ENV

STEPS = 24  # steps per epoch of every config here: 2,400 training rows / batch 100; streamed: 6,000 / 250
TIMINGS = ("seconds", "samples_per_second")
WAIT = 240  # seconds a kill point may take to come (the 2-rank job's start on loaded cores)


def _config(synthetic_config, **train) -> dict:
    return synthetic_config(model={"name": "dnn", "embed_dim": 8, "hidden": [32, 16]},
                            train={"epochs": 3, "batch_size": 100, "patience": 5,
                                   "checkpoint": {"every_steps": 4, "keep": 2}, **train})


def _stream_config(folder: Path, **train) -> dict:
    """8,000 synthetic rows in Parquet: training rows streamed from 2 files of 1,000- and 700-row groups."""
    from msrec.data.datasets import synthetic

    table = synthetic.generate(rows=8_000, seed=3)
    (folder / "train").mkdir(parents=True)
    pq.write_table(table.slice(0, 3_000), folder / "train" / "a.parquet", row_group_size=1_000)
    pq.write_table(table.slice(3_000, 3_000), folder / "train" / "b.parquet", row_group_size=700)
    pq.write_table(table.slice(6_000, 1_000), folder / "val.parquet")
    pq.write_table(table.slice(7_000), folder / "test.parquet")
    return {"data": {"sparse": ["user_id", "item_id", "user_group", "item_category"],
                     "dense": ["user_activity", "item_price"], "scenario": "scenario", "labels": ["click"],
                     "train": str(folder / "train"), "val": str(folder / "val.parquet"),
                     "test": str(folder / "test.parquet"), "streaming": True, "shuffle_buffer": 2_500},
            "model": {"name": "dnn", "embed_dim": 8, "hidden": [32]},
            "train": {"epochs": 3, "batch_size": 250, "progress": False, "seed": 5, **train}}


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


def _test_auc(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["test"]["overall"]["auc"]


def _steps(out: Path) -> list[int]:
    return [int(p.name.split(".")[0]) for p in checkpoint_files(out)]


def _complete(out: Path, ranks: int) -> None:
    """Every checkpoint listed is whole: DCP's metadata, each rank's file and every file the metadata names."""
    for path in checkpoint_files(out):
        names = {p.name for p in path.iterdir()}
        assert {".metadata", *(f"__{r}_0.distcp" for r in range(ranks))} <= names, (path, names)
        from torch.distributed.checkpoint import FileSystemReader

        metadata = FileSystemReader(path).read_metadata()
        assert {item.relative_path for item in metadata.storage_data.values()} <= names


def _wait(proc: subprocess.Popen, until, timeout: float = WAIT) -> bool:
    """Poll until `until()` holds (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the training process")


def _launch(config: Path, out: Path, sleep: float, nproc: int) -> subprocess.Popen:
    env = {**os.environ, WRITE_SLEEP_ENV: str(sleep), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "msrec", "train", str(config), "--out", str(out), "--resume",
                             *(["--nproc", str(nproc)] if nproc > 1 else [])],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ranks(launcher: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun started under `launcher` (from /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == launcher:
                env = (stat.parent / "environ").read_bytes().split(b"\0")
                found[int(next(e for e in env if e.startswith(b"RANK="))[5:])] = int(stat.parent.name)
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return found


def _kill(proc: subprocess.Popen, rank: int | None = None) -> None:
    """SIGKILL the whole job (a pre-empted machine), or one rank of it (torchrun then stops the others). torchrun's
    workers have process groups of their own: each is killed by its pid."""
    workers = _ranks(proc.pid)
    if rank is not None:
        os.kill(workers.pop(rank), signal.SIGKILL)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    for pid in [proc.pid, *workers.values()]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    while not all(_dead(pid) for pid in workers.values()):
        time.sleep(0.01)


def _dead(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()  # not yet reaped (by init, torchrun gone)
    except OSError:
        return True


def _interrupt_and_resume(config: Path, out: Path, nproc: int = 1) -> None:
    """SIGKILL `msrec train CONFIG --out OUT --resume` during a checkpoint write, during validation and mid-epoch,
    resuming each time, then let it finish; after each kill, every checkpoint listed is whole."""
    folder = checkpoint_dir(out)
    rng = random.Random(os.getpid())
    # 1. during a checkpoint write: the temp folder is there, not yet renamed
    proc = _launch(config, out, 0.5, nproc)
    assert _wait(proc, lambda: _steps(out) and any(folder.glob(".*.tmp"))), proc.communicate()[1].decode()[-3000:]
    _kill(proc)
    assert any(folder.glob(".*.tmp")), "the kill should have landed inside a write"
    _complete(out, nproc)
    before = _steps(out)
    # 2. during validation: right after the epoch's last step was checkpointed
    proc = _launch(config, out, 0.02, nproc)
    assert _wait(proc, lambda: _steps(out) and max(_steps(out)) >= STEPS), proc.communicate()[1].decode()[-3000:]
    _kill(proc, rank=rng.randrange(nproc) if nproc > 1 else None)
    assert max(_steps(out)) >= max(before)
    assert not (out / "metrics.json").exists()
    _complete(out, nproc)
    # 3. mid-epoch, at a random moment after a new checkpoint
    proc = _launch(config, out, 0.02, nproc)
    done = max(_steps(out))
    assert _wait(proc, lambda: _steps(out) and max(_steps(out)) > done), proc.communicate()[1].decode()[-3000:]
    time.sleep(rng.uniform(0, 0.05))
    _kill(proc, rank=rng.randrange(nproc) if nproc > 1 else None)
    # pruned to `keep`, + 1 when the kill fell between a new checkpoint's rename and the oldest one's removal
    assert 0 < len(checkpoint_files(out)) <= 3
    _complete(out, nproc)
    # 4. to the end (from the newest checkpoint)
    proc = _launch(config, out, 0, nproc)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err.decode()[-4000:]
    assert not folder.exists()


def test_sigkilled_run_resumes_bit_identical(synthetic_config, tmp_path):
    cfg = _config(synthetic_config)
    ref = msrec.train(cfg, out=tmp_path / "ref", console=None).run_dir
    assert not checkpoint_dir(ref).exists()  # removed once the run is written
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    _interrupt_and_resume(config, tmp_path / "out")
    _same_run(ref, tmp_path / "out")


def test_sigkilled_streaming_run_resumes(tmp_path):
    cfg = _stream_config(tmp_path, checkpoint={"every_steps": 4, "keep": 2})
    ref = msrec.train(cfg, out=tmp_path / "ref").run_dir
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    _interrupt_and_resume(config, tmp_path / "out")
    assert _test_auc(tmp_path / "out") == pytest.approx(_test_auc(ref), abs=1e-4)


def test_sigkilled_two_rank_run_resumes(synthetic_config, tmp_path):
    """torchrun with 2 ranks (gloo): each kill takes the whole job, or one rank (torchrun then stops the other)."""
    cfg = _config(synthetic_config)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    ref = subprocess.Popen([sys.executable, "-m", "msrec", "train", str(config), "--out", str(tmp_path / "ref"),
                            "--nproc", "2"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # beside the interrupted job
    _interrupt_and_resume(config, tmp_path / "out", nproc=2)
    _, err = ref.communicate(timeout=WAIT)
    assert ref.returncode == 0, err.decode()[-4000:]
    assert _test_auc(tmp_path / "out") == pytest.approx(_test_auc(tmp_path / "ref"), abs=1e-4)


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
    cfg = _stream_config(tmp_path, checkpoint={"every_steps": 10, "keep": 10, "keep_after": True})
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
