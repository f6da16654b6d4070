"""msrec's trainer vs a per-row `Dataset` + default-collate `DataLoader` over a pandas frame, training `dnn`
on MovieLens 100K with batch 4096: samples per second of each, and their ratio.

Both sides train the same model (same architecture and seed) with the same optimizer (Adam, lr 1e-3,
weight decay 1e-5) on the same encoded training split (80,000 rows of the seeded 80/10/10 split):

- msrec: `Trainer.fit` for one epoch; samples/s is the trainer's own timing of its training loop (shuffled
  batches gathered from the tensor table, forward, loss, backward, step, progress bookkeeping), validation
  excluded;
- DataLoader: the encoded columns in a pandas DataFrame; `Dataset.__getitem__` reads one row with `.iloc`
  and returns tensors; `DataLoader(shuffle=True, batch_size=4096, num_workers=0)` collates them with the
  default collate; each collated batch becomes a `Batch` for the same forward/loss/backward/step.

Epochs alternate between the two sides (msrec, DataLoader, msrec, ...) so that a change of load on the
machine hits both; each figure is the median over `--epochs` epochs (default 3).

    .venv/bin/python benchmarks/loader_vs_dataloader.py [--data DIR] [--epochs 3] [--threads N]

`--data` is a folder in GroupLens's 100K layout (u.data, u.user, u.item); by default it is built in a temporary
folder from ../shared/data/movielens-100k (the Parquet copies), as the tests do.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from msrec.api import as_config, prepare_data
from msrec.data.datasets.movielens import write_100k_layout
from msrec.data.table import Batch, TensorTable
from msrec.models.registry import build_model
from msrec.train.trainer import Trainer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "movielens-100k"


class FrameDataset(Dataset):
    """The usual per-row dataset: one `.iloc` per column group per row, tensors out."""

    def __init__(self, frame: pd.DataFrame, sparse: list[str], dense: list[str], labels: list[str]):
        self.sparse, self.dense = frame[sparse], frame[dense]
        self.scenario, self.labels = frame["scenario"], frame[labels]

    def __len__(self) -> int:
        return len(self.scenario)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"sparse": torch.tensor(self.sparse.iloc[i].to_numpy()),
                "dense": torch.tensor(self.dense.iloc[i].to_numpy()),
                "scenario": torch.tensor(self.scenario.iloc[i]),
                "labels": torch.tensor(self.labels.iloc[i].to_numpy())}


def to_frame(table: TensorTable) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    """The encoded split as a pandas frame (encoding is not what is measured)."""
    sparse = [f"s{j}" for j in range(table.sparse.shape[1])]
    dense = [f"d{j}" for j in range(table.dense.shape[1])]
    labels = [f"y{j}" for j in range(table.labels.shape[1])]
    cols = {**{c: table.sparse[:, j].numpy() for j, c in enumerate(sparse)},
            **{c: table.dense[:, j].numpy() for j, c in enumerate(dense)},
            "scenario": table.scenario.numpy(),
            **{c: table.labels[:, j].numpy() for j, c in enumerate(labels)}}
    return pd.DataFrame(cols), sparse, dense, labels


def train_epoch(model, optimizer, batches) -> float:
    """Samples/s of one epoch of plain training steps over `batches`."""
    model.train()
    seen = 0
    t0 = time.perf_counter()
    for batch in batches:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(batch)
    return seen / (time.perf_counter() - t0)


def dataloader_epoch(model, optimizer, loader: DataLoader) -> float:
    """The per-row DataLoader's collated dicts, turned into batches as they arrive (inside the timing)."""
    return train_epoch(model, optimizer, (Batch(sparse=item["sparse"], dense=item["dense"], scenario=item["scenario"],
                                                labels=item["labels"]) for item in loader))


def data_only(batches, limit_rows: int) -> float:
    """Samples/s of a data path alone (no model), over its first `limit_rows` rows."""
    seen = 0
    t0 = time.perf_counter()
    for item in batches:
        seen += len(item) if isinstance(item, Batch) else len(item["scenario"])
        if seen >= limit_rows:
            break
    return seen / (time.perf_counter() - t0)


def bare_model_epoch(model, optimizer, batches: list[Batch]) -> float:
    """The model's own step over pre-built batches: the ceiling of any data path."""
    return train_epoch(model, optimizer, batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="folder with u.data, u.user, u.item (default: built from ../shared)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data
        if folder is None:
            parts = [pq.read_table(SHARED / f"MovieLens100k_{p}.parquet.brotli") for p in ("data", "users", "items")]
            folder = write_100k_layout(*parts, Path(tmp) / "ml-100k")
        cfg = as_config({"data": {"dataset": "movielens-100k", "path": str(folder)},
                         "model": {"name": "dnn", "embed_dim": 16},
                         "train": {"epochs": 1, "batch_size": args.batch_size, "lr": 0.001, "weight_decay": 1e-5,
                                   "seed": 2022, "progress": False}})
        data = prepare_data(cfg)
    spec = data.encoder.spec()
    train, val = data.train, data.val.subset(torch.arange(1000))  # tiny val: not timed anyway

    torch.manual_seed(cfg.train.seed)
    msrec_model = build_model("dnn", spec, cfg.model.options())
    trainer = Trainer(msrec_model, cfg.train, spec.scenarios, spec.tasks)

    torch.manual_seed(cfg.train.seed)
    loader_model = build_model("dnn", spec, cfg.model.options())
    optimizer = torch.optim.Adam(loader_model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    frame, sparse, dense, labels = to_frame(train)
    loader = DataLoader(FrameDataset(frame, sparse, dense, labels), batch_size=args.batch_size, shuffle=True,
                        num_workers=0, generator=torch.Generator().manual_seed(cfg.train.seed))

    msrec_speed, loader_speed = [], []
    for epoch in range(1, args.epochs + 1):
        msrec_speed.append(trainer.fit(train, val).samples_per_second)
        loader_speed.append(dataloader_epoch(loader_model, optimizer, loader))
        print(f"epoch {epoch}: msrec {msrec_speed[-1]:,.0f} samples/s   DataLoader {loader_speed[-1]:,.0f} samples/s",
              flush=True)
    # Where the time goes: each data path alone, and the model step alone over pre-built batches.
    msrec_data = data_only(train.batches(args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(1)),
                           len(train))
    loader_data = data_only(loader, 5 * args.batch_size)
    prebuilt = list(train.batches(args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(2)))
    bare = statistics.median(bare_model_epoch(loader_model, optimizer, prebuilt) for _ in range(2))
    a, b = statistics.median(msrec_speed), statistics.median(loader_speed)
    print(f"\ndnn on MovieLens 100K, {len(train):,} training rows, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, median of {args.epochs} epochs")
    print(f"msrec trainer:                   {a:>10,.0f} samples/s")
    print(f"per-row Dataset + DataLoader:    {b:>10,.0f} samples/s")
    print(f"ratio:                           {a / b:>10.1f}x")
    print("\nwhere the time goes (samples/s):")
    print(f"  msrec batches alone (no model):     {msrec_data:>12,.0f}")
    print(f"  DataLoader batches alone (no model):{loader_data:>12,.0f}")
    print(f"  model step alone, pre-built batches:{bare:>12,.0f}  (the ceiling of any data path)")
    print(f"  ratio bound by the model: at most {(1 / bare + 1 / loader_data) / (1 / bare):.1f}x "
          "with a free data path")


if __name__ == "__main__":
    main()
