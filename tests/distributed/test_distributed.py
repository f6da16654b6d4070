"""Distributed training on CPU (gloo, 2 processes on this machine).

- 2 ranks and 1 process with the same global batch reach the same metrics (dnn; separate, whose
  per-scenario sub-models get no gradient on a rank whose share lacks their scenario);
- only rank 0 writes the run directory; every rank gets the same gathered metrics;
- the streaming Parquet path trains with each rank on its own row groups;
- a rank that crashes or hangs makes the job fail with a clear message within a bounded time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import msrec.api
from msrec.data.datasets import synthetic
from msrec.errors import MsrecError
from msrec.runs import RUN_FILES
from msrec.train import distributed

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker.py"
PYTHON = sys.executable
LAUNCH_TIMEOUT = 240  # seconds; a hang fails the test instead of the suite
TRAIN = {"epochs": 2, "batch_size": 256, "lr": 0.003, "progress": False, "dist_timeout": 60}
MODEL = {"dropout": 0.0, "hidden": [32, 16], "embed_dim": 8}  # no dropout: ranks draw different masks


def _config(folder: Path, name: str, model: str, data: dict, model_options: dict | None = None, **train) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"data": data, "model": {"name": model, **MODEL, **(model_options or {})},
                                    "train": {**TRAIN, **train}}))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


class Job:
    """A process started now and waited for later, its output in a file (jobs run side by side: the
    machine's cores are busy with one job's imports while another's rank waits on its peer)."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]):
        self.cmd, self.log, self.started = cmd, log, time.monotonic()
        with log.open("w") as f:
            self.proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)

    def wait(self) -> tuple[int, str, float]:
        """Exit code, output, seconds from start to exit."""
        try:
            code = self.proc.wait(timeout=max(1.0, LAUNCH_TIMEOUT - (time.monotonic() - self.started)))
        finally:
            self.proc.kill()
        return code, self.log.read_text(), time.monotonic() - self.started

    def check(self) -> None:
        code, output, _ = self.wait()
        assert code == 0, f"{' '.join(self.cmd)} failed:\n{output[-4000:]}"


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dist")
    table = synthetic.generate(rows=6_000, seed=5)
    (folder / "train").mkdir()
    for k in range(4):  # 4 row groups per file, 2 files: each rank streams 4 of the 8 row groups
        pq.write_table(table.slice(k * 1_200, 1_200), folder / "train" / f"part{k}.parquet", row_group_size=600)
    pq.write_table(table.slice(4_800, 600), folder / "val.parquet")
    pq.write_table(table.slice(5_400), folder / "test.parquet")
    synth = {"dataset": "synthetic", "options": {"rows": 6_000}}
    stream = {"train": str(folder / "train"), "val": str(folder / "val.parquet"), "test": str(folder / "test.parquet"),
              "streaming": True, "shuffle_buffer": 1_000,
              "sparse": ["user_id", "item_id", "user_group", "item_category"],
              "dense": ["user_activity", "item_price"], "scenario": "scenario", "labels": ["click"]}
    return {"folder": folder, "dnn": _config(folder, "dnn", "dnn", synth),
            "separate": _config(folder, "separate", "separate", synth),
            "stream": _config(folder, "stream", "dnn", stream),
            "batchnorm": _config(folder, "batchnorm", "dnn", synth, {"batch_norm": True}, epochs=1)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jobs(configs):
    """Every 2-rank job of this module, started at once:
    - `cli`: `msrec train --nproc 2` (the torchrun wrapper) on the dnn config;
    - `torchrun`: `torchrun --nproc_per_node 2` of a worker training the separate model and the streaming config;
    - `raise` / `hang`: 2 ranks started by hand, without torchrun's agent (as on several machines, where nothing
      kills the survivors), rank 1 raising (a crash) or sleeping (a hang) at its first validation."""
    folder = configs["folder"]
    started = {
        "cli": Job([PYTHON, "-m", "msrec", "train", str(configs["dnn"]), "--out", str(folder / "cli-dnn"),
                    "--nproc", "2"], folder / "cli.log", _env()),
        "torchrun": Job([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
                         str(folder / "torchrun"), str(configs["separate"]), str(configs["stream"]),
                         str(configs["batchnorm"])],
                        folder / "torchrun.log", _env()),
    }
    crash = _config(folder, "crash", "dnn", {"dataset": "synthetic", "options": {"rows": 1_000}},
                    epochs=1, dist_timeout=5)
    for mode in ("raise", "hang"):
        env = _env(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                   MSREC_TEST_CRASH_RANK="1", MSREC_TEST_CRASH_MODE=mode)
        for r in (0, 1):
            started[f"{mode}{r}"] = Job([PYTHON, str(WORKER), str(folder / mode), str(crash)],
                                        folder / f"{mode}{r}.log", {**env, "RANK": str(r), "LOCAL_RANK": str(r)})
    # Ranks that read different data (rank 1 has more rows): both must stop at once, saying so.
    env = _env(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    for r, rows in ((0, 1_000), (1, 1_200)):
        (folder / f"r{r}").mkdir()
        other = _config(folder / f"r{r}", "mismatch", "dnn", {"dataset": "synthetic", "options": {"rows": rows}},
                        epochs=1, dist_timeout=600)  # far above the bound below: a wait for it cannot pass
        started[f"mismatch{r}"] = Job([PYTHON, str(WORKER), str(folder / "mismatch"), str(other)],
                                      folder / f"mismatch{r}.log", {**env, "RANK": str(r), "LOCAL_RANK": str(r)})
    yield started
    for job in started.values():
        job.proc.kill()
        job.proc.wait()


@pytest.fixture(scope="module")
def cli_run(configs, jobs) -> Path:
    jobs["cli"].check()
    return configs["folder"] / "cli-dnn"


@pytest.fixture(scope="module")
def torchrun_runs(configs, jobs) -> Path:
    jobs["torchrun"].check()
    return configs["folder"] / "torchrun"


def rows(metrics: dict, split: str) -> int:
    return metrics[split]["tasks"]["click"]["overall"]["rows"]


def _assert_same_metrics(two: dict, one: dict) -> None:
    for split in ("val", "test"):
        assert two[split]["macro_auc"] == pytest.approx(one[split]["macro_auc"], abs=2e-4)
        assert two[split]["overall"]["auc"] == pytest.approx(one[split]["overall"]["auc"], abs=2e-4)
        assert two[split]["overall"]["logloss"] == pytest.approx(one[split]["overall"]["logloss"], abs=2e-4)
        assert rows(two, split) == rows(one, split)  # every row scored once
    assert two["train"]["best_epoch"] == one["train"]["best_epoch"]
    for h2, h1 in zip(two["train"]["history"], one["train"]["history"], strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], abs=2e-4)


def test_cli_two_ranks_match_one_process_dnn(configs, cli_run):
    one = msrec.api.train(configs["dnn"], save=False).metrics
    two = json.loads((cli_run / "metrics.json").read_text())
    assert two["train"]["world_size"] == 2 and "world_size" not in one["train"]
    _assert_same_metrics(two, one)


def test_only_rank_zero_writes_the_run(configs, cli_run):
    assert sorted(p.name for p in cli_run.iterdir()) == sorted(RUN_FILES)
    leftovers = [p.name for p in cli_run.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no second (rank 1) temporary run folder
    run = msrec.api.load_run(cli_run)  # loadable like any single-process run
    assert run.metrics["train"]["world_size"] == 2


def test_torchrun_two_ranks_match_one_process_separate(configs, torchrun_runs):
    one = msrec.api.train(configs["separate"], save=False).metrics
    ranks = [json.loads((torchrun_runs / f"separate.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["val"] == ranks[1]["val"] and ranks[0]["test"] == ranks[1]["test"]  # one gathered report
    _assert_same_metrics(ranks[0], one)
    assert (torchrun_runs / "separate" / "model.safetensors").is_file()


def test_streaming_two_ranks_each_read_their_row_groups(configs, torchrun_runs):
    two = json.loads((torchrun_runs / "stream.rank0.json").read_text())
    one = msrec.api.train(configs["stream"], save=False).metrics
    # Different shuffles (per-rank row groups and buffers), so close rather than equal; every test row scored.
    assert rows(two, "test") == rows(one, "test") == 600
    assert two["test"]["macro_auc"] == pytest.approx(one["test"]["macro_auc"], abs=0.03)
    # Each rank reads 3 000 of the 6 000 rows per epoch; together they see every row.
    assert two["train"]["history"][0]["train_loss"] == pytest.approx(one["train"]["history"][0]["train_loss"],
                                                                   abs=0.02)


def test_ranks_evaluate_and_save_rank_zero_batch_norm_statistics(configs, torchrun_runs):
    """Each rank's last steps update its own running statistics (DDP syncs them only at the next forward):
    evaluation and the saved model use rank 0's on every rank."""
    ranks = [torch.load(torchrun_runs / f"batchnorm.rank{r}.buffers.pt") for r in (0, 1)]
    assert any("running_var" in name for name in ranks[0])
    saved = msrec.api.load_run(torchrun_runs / "batchnorm").model
    for name, value in saved.named_buffers():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.equal(ranks[0][name], value), name


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_a_failed_rank_fails_the_job_with_a_clear_message(configs, jobs, mode):
    """Rank 1 crashed or hangs; rank 0 must stop with a clear error within a bounded time, not wait forever."""
    code, output, seconds = jobs[f"{mode}0"].wait()
    assert code != 0
    assert "rank 0/2: distributed training stopped: another rank crashed or did not answer within " \
           "train.dist_timeout=5s" in output, output[-3000:]
    if mode == "hang":
        assert "timed out" in output.lower()
    assert seconds < LAUNCH_TIMEOUT / 2
    assert not (configs["folder"] / mode / "crash").exists()  # no run directory from a failed job


def test_ranks_that_read_different_data_stop_with_a_clear_message(configs, jobs):
    (code0, out0, seconds), (code1, out1, _) = jobs["mismatch0"].wait(), jobs["mismatch1"].wait()
    assert code0 != 0 and code1 != 0
    assert "rank 1/2: its data differ from rank 0's (train rows: 960 here, 800 on rank 0" in out1, out1[-3000:]
    assert "rank 0/2: another rank's data differ from rank 0's" in out0, out0[-3000:]
    assert seconds < 240  # at once, not after the peers' timeout (600 s; the jobs of this file start together)


def test_launch_names_the_rank_that_failed_first(monkeypatch):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    def failed(_args):
        failures = {1: ProcessFailure(local_rank=1, pid=1, exitcode=3, error_file="none"),
                    0: ProcessFailure(local_rank=0, pid=2, exitcode=-15, error_file="none")}
        failures[1].timestamp, failures[0].timestamp = 10, 11
        raise ChildFailedError("msrec", failures)

    monkeypatch.setattr("torch.distributed.run.run", failed)
    with pytest.raises(MsrecError, match=r"rank 1 \(exit code 3\) stopped first"):
        distributed.launch(2, ["train", "config.yaml"])
    with pytest.raises(MsrecError, match="--nproc"):
        distributed.launch(0, ["train", "config.yaml"])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 200), batch=st.integers(4, 48), world=st.integers(2, 4))
def test_rank_shares_rebuild_the_single_process_global_batches(n, batch, world):
    """Every rank's share of global batch k, in rank order, is batch k of the single process; the loss
    scales make the mean over ranks of the scaled per-rank means the global-batch mean."""
    table = synthetic_table(n)
    single = [b.sparse for b in table.batches(batch, shuffle=True, generator=torch.Generator().manual_seed(7))]
    shares = []
    for rank in range(world):
        shard = table.shard(rank, world)
        if n < world:  # not a row per rank: a clear error rather than an epoch of no steps
            with pytest.raises(MsrecError, match=f"{n} training rows cannot give each of the {world} ranks a row"):
                shard.steps(batch)
            return
        shares.append(list(shard.batches(batch, shuffle=True, generator=torch.Generator().manual_seed(7))))
        assert len(shares[-1]) == shard.steps(batch)
    steps = len(shares[0])
    assert all(len(s) == steps for s in shares)  # every rank takes the same number of steps (else DDP hangs)
    assert steps == len(single) - (1 if 0 < n % batch < world else 0)  # only a last batch too small to share
    for k in range(steps):
        assert torch.equal(torch.cat([s[k].sparse for s in shares]), single[k])
        assert all(len(s[k]) > 0 for s in shares)
        losses = [s[k].sparse.double() for s in shares]  # any per-row loss: DDP averages scaled means
        ddp = sum(s[k].loss_scale * loss.mean() for s, loss in zip(shares, losses)) / world
        assert float(ddp) == pytest.approx(float(single[k].double().mean()), rel=1e-12)


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "two"}])
def test_a_bad_launch_environment_is_named(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(MsrecError, match="RANK"):
        distributed.env_info()


def test_global_batch_smaller_than_the_ranks_is_an_error():
    with pytest.raises(MsrecError, match="batch_size=3 is the global batch"):
        synthetic_table(10).shard(0, 4).steps(3)


def synthetic_table(n: int):
    from msrec.data.table import TensorTable

    return TensorTable(sparse=torch.arange(n).unsqueeze(1), dense=torch.zeros(n, 1),
                       scenario=torch.zeros(n, dtype=torch.long), labels=torch.zeros(n, 1))
