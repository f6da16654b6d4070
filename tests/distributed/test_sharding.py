"""Embedding tables sharded with TorchRec (`train.embedding_sharding: torchrec`), CPU, gloo, 2 ranks.

- each rank holds a part of the table's rows (read from its local shards), the parts adding up to the table;
- 2 sharded ranks take the steps of 1 process: the same test metrics and, with `sgd` (whose steps scale with the
  gradient, so a gradient summed instead of averaged over the ranks shows), the same table;
- the written run directory loads in one process and scores as rank 0's model did;
- scoring keeps the ranks in lock-step (a validation shard needing one more batch than the other's: a hang
  without it);
- a sharded run that cannot be honoured is a clear error (before any data is read where the config says it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

import msrec.api
from msrec.data.datasets import synthetic
from msrec.errors import MsrecError
from msrec.models.registry import build_model, parse_options
from msrec.nn import FeatureEmbedding
from msrec.train import sharding
from msrec.train.distributed import DistInfo, Session

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker.py"
TIMEOUT = 300  # seconds; a hang fails the test instead of the suite
MODEL = {"name": "dnn", "dropout": 0.0, "hidden": [32, 16], "embed_dim": 8}  # no dropout: ranks draw other masks
# 301 validation rows: rank shards of 151 and 150 rows, so 3 and 2 scoring batches of 75 without lock-step
TRAIN = {"epochs": 2, "batch_size": 256, "lr": 0.003, "eval_batch_size": 75, "progress": False, "dist_timeout": 60}
OPTIMIZERS = {"adagrad": {"name": "rowwise_adagrad"}, "sgd": {"name": "sgd", "lr": 0.5}}


def _config(folder: Path, name: str, data: dict, sharded: bool) -> Path:
    train = {**TRAIN, "embedding_optimizer": OPTIMIZERS[name], "embedding_sharding": "torchrec" if sharded else "none"}
    path = folder / f"{name}{'' if sharded else '-one'}.yaml"
    path.write_text(yaml.safe_dump({"data": data, "model": MODEL, "train": train}))
    return path


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """`torchrun --nproc_per_node 2` of the worker on both sharded configs, started before the 1-process runs."""
    folder = tmp_path_factory.mktemp("sharding")
    table = synthetic.generate(rows=3_000, seed=7)
    for split, (start, rows) in {"train": (0, 2_400), "val": (2_400, 301), "test": (2_701, 299)}.items():
        pq.write_table(table.slice(start, rows), folder / f"{split}.parquet")
    data = {**{s: str(folder / f"{s}.parquet") for s in ("train", "val", "test")},
            "sparse": ["user_id", "item_id", "user_group", "item_category"], "dense": ["user_activity", "item_price"],
            "scenario": "scenario", "labels": ["click"]}
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = folder / "torchrun.log"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                 str(WORKER), str(folder / "out"), *(str(_config(folder, n, data, True)) for n in OPTIMIZERS)],
                                env=env, stdout=f, stderr=subprocess.STDOUT)
    one = {n: msrec.api.train(_config(folder, n, data, False), save=False) for n in OPTIMIZERS}
    try:
        code = proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert code == 0, log.read_text()[-4000:]
    return folder / "out", one


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_rank_holds_part_of_the_rows(job, name):
    out, _ = job
    held = [json.loads((out / f"{name}.rank{r}.held.json").read_text()) for r in range(2)]
    table_rows = held[0]["table_rows"]
    assert all(0 < h["rows"] < table_rows for h in held)
    assert sum(h["rows"] for h in held) == table_rows
    summary = json.loads((out / name / "metrics.json").read_text())["train"]["embedding_sharding"]
    assert summary["rows_per_rank"] == [h["rows"] for h in held] and summary["table_rows"] == table_rows


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_two_sharded_ranks_match_one_process(job, name):
    out, one = job
    ranks = [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["test"] == ranks[1]["test"]  # gathered, computed once
    for split in ("val", "test"):
        assert ranks[0][split]["macro_auc"] == pytest.approx(one[name].metrics[split]["macro_auc"], abs=2e-4)
    weights = load_file(out / name / "model.safetensors")
    reference = one[name].model.state_dict()
    assert set(weights) == set(reference)  # the same run-directory format as an unsharded run
    table = "embedding.table.weight"
    assert torch.allclose(weights[table], reference[table], atol=2e-4), (weights[table] - reference[table]).abs().max()


def test_the_sharded_run_loads_in_one_process_and_scores_as_rank_zero(job):
    out, _ = job
    rank0 = json.loads((out / "adagrad.rank0.json").read_text())
    assert msrec.api.evaluate(out / "adagrad")["macro_auc"] == pytest.approx(rank0["test"]["macro_auc"], abs=1e-6)


TWO_RANKS = Session(DistInfo(rank=0, world_size=2))


def test_sharding_one_process_is_a_clear_error():
    config = {"data": {"dataset": "synthetic", "options": {"rows": 500}}, "model": MODEL,
              "train": {**TRAIN, "embedding_sharding": "torchrec"}}
    with pytest.raises(MsrecError, match="--nproc N"):
        msrec.api.train(config, save=False)


def test_sharding_a_dense_table_optimizer_is_a_clear_error():
    cfg = msrec.api.as_config({"data": {"dataset": "synthetic"}, "train": {
        "embedding_sharding": "torchrec", "embedding_optimizer": {"name": "dense"}}})
    with pytest.raises(MsrecError, match="embedding_optimizer: dense"):
        sharding.check(cfg.train, TWO_RANKS)


def test_a_model_with_several_embeddings_is_refused():
    data = msrec.api.prepare_data(msrec.api.as_config({"data": {"dataset": "synthetic", "options": {"rows": 500}}}))
    spec = data.encoder.spec()
    assert sharding._embedding(build_model("separate", spec, parse_options("separate", {}))) is not None
    with pytest.raises(MsrecError, match="has 2"):
        sharding._embedding(nn.ModuleList([FeatureEmbedding(spec, 4), FeatureEmbedding(spec, 4)]))


def test_missing_torchrec_names_the_install_command(monkeypatch):
    cfg = msrec.api.as_config({"data": {"dataset": "synthetic"}, "train": {"embedding_sharding": "torchrec"}})
    monkeypatch.setitem(sys.modules, "torchrec", None)  # import torchrec raises ImportError
    with pytest.raises(MsrecError, match="pip install --no-deps torchrec==1.8.0"):
        sharding.check(cfg.train, TWO_RANKS)
