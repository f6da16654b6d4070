"""The rows `msrec extend` learns from and what they decide (docs/scenarios.md, "Onboarding a new scenario"):
NEW's split, the fields whose vocabularies grow, the old scenario each new one starts from, and the old run's
own training rows (the from-scratch baseline's, and `extend.replay`'s, mixed into the extension's epochs)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from msrec.config import Config
from msrec.data.checks import check_table
from msrec.data.encode import Encoder
from msrec.data.io import read_table
from msrec.data.prepare import RawSplits, load_splits, split_rows
from msrec.data.table import Batch, TensorTable
from msrec.errors import MsrecError
from msrec.runs import Run
from msrec.train.predict import Scorer

# extend.vocab=auto: a sparse field's vocabulary grows when at least this share of NEW's training rows hold a
# value of it the run did not know (a new scenario that brings its own users); rarer new values stay unknown
# (a few rows each would train their rows from a handful of examples). Measured in docs/scenarios.md.
VOCAB_SHARE = 0.5
SIMILARITY_ROWS = 4096  # new rows scored under each old scenario to pick the most similar one


def growing_fields(run: Run, new: dict[str, pa.Table], source: str, vocab: str) -> list[str]:
    """The sparse fields whose vocabularies grow by NEW's unseen values: the scenario indicators always; every
    field with `all`; with `auto` those whose unseen values fill at least VOCAB_SHARE of NEW's training rows."""
    schema = run.encoder.schema
    if vocab != "auto":
        return list(schema.sparse) if vocab == "all" else list(schema.scenario_features)
    every = run.encoder.grown(new["all"], source, list(schema.sparse)).transform(new["train"], source)
    unseen = (every.sparse >= torch.tensor(run.encoder.spec().sparse_vocab, dtype=every.sparse.dtype)).double().mean(0)
    return [f for f, share in zip(schema.sparse, unseen.tolist(), strict=True)
            if share >= VOCAB_SHARE or f in schema.scenario_features]


def read_new(path: str | Path, run: Run, cfg: Config) -> dict[str, pa.Table]:
    """NEW's rows, checked against the run's schema, in the run's seeded train / val / test split."""
    schema = run.encoder.schema
    table = read_table(path, string_columns=schema.text_columns())
    check_table(table, schema, str(path), missing_ids=run.encoder.missing_ids)
    seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.train.seed
    parts = split_rows(table.num_rows, cfg.data.split, seed)
    splits = {name: table.take(pa.array(rows)) for name, rows in zip(("train", "val", "test"), parts) if len(rows)}
    if "train" not in splits or "val" not in splits:
        raise MsrecError(f"{path}: too few rows to hold a training and a validation split")
    return {"all": table, **splits}


def sources(run: Run, grown: Encoder, train: TensorTable, old_s: int) -> list[int]:
    """The old scenario each new one starts from: its parent level's where the scenario is hierarchical and the
    parent has an id of its own, else the old scenario whose parameters give the new rows the lowest log loss
    (the old model, indicators unknown, every row routed to that scenario)."""
    levels = grown.spec().levels
    ids = [tuple(c) for c in levels.ids] if levels else []
    old = {c: s for s, c in enumerate(ids[:old_s])}
    scorer = Scorer(run.model, run.encoder.scenario_names, list(grown.schema.labels), run.config.train.eval_batch_size)
    unknown = as_unknown(train, run.encoder)
    out = []
    for s in range(old_s, len(grown.scenario_names)):
        parent = old.get((ids[s][0], *[0] * (len(ids[s]) - 1))) if ids else None
        if parent is not None:
            out.append(parent)
            continue
        rows = (train.scenario == s).nonzero().squeeze(1)[:SIMILARITY_ROWS]
        if not len(rows):
            raise MsrecError(f"scenario {grown.scenario_names[s]}: no training rows in the new data to learn from")
        part = unknown.subset(rows)
        y = part.labels.double()
        losses = []
        for candidate in range(old_s):  # one scoring pass per old scenario, on a few thousand rows
            part.scenario = torch.full_like(part.scenario, candidate)
            p = scorer.predict(part).double().clamp(1e-7, 1 - 1e-7)
            losses.append(float(-(y * p.log() + (1 - y) * (1 - p).log()).mean()))
        out.append(int(np.argmin(losses)))
    return out


def as_unknown(table: TensorTable, old: Encoder) -> TensorTable:
    """Rows encoded by the grown encoder as the old encoder sees them: every new id unknown (0)."""
    part = table.subset(torch.arange(len(table)))
    sizes = torch.tensor(old.spec().sparse_vocab, dtype=part.sparse.dtype)
    part.sparse[part.sparse >= sizes] = 0
    return part


def old_splits(run: Run, why: str) -> RawSplits:
    """The old run's own train / val / test rows, read again from where its config says (RUN keeps no copy)."""
    data = run.config.data
    where = data.train or f"dataset {data.dataset}" + (f" at {data.path}" if data.path else "")
    try:
        return load_splits(data, run.config.train.seed)
    except (OSError, pa.ArrowInvalid, MsrecError) as err:
        raise MsrecError(f"{where}: the training data of the run cannot be read again ({err}); {why} needs it "
                         "(restore the file, or skip what needs it)") from None


def _inputs(table: TensorTable) -> TensorTable:
    """The columns training reads (a replayed and a new table may differ in the rest, e.g. `truth`)."""
    return TensorTable(table.sparse, table.dense, table.scenario, table.lists, table.labels)


@dataclass
class ReplaySource:
    """A `BatchSource` of every NEW training row and `ratio` old training rows per new one (all of them if
    there are fewer), the old ones drawn afresh every epoch from the shuffling generator: the shared parameters
    see the old rows' distribution while the new scenario trains, and no old row is seen far more often
    than in the run's own training."""

    new: TensorTable
    old: TensorTable
    ratio: int
    table: TensorTable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.table = TensorTable.concat([_inputs(self.new), _inputs(self.old)])
        self.replayed = min(len(self.old), self.ratio * len(self.new))

    def __len__(self) -> int:
        return len(self.new) + self.replayed

    def steps(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        n = len(self.new)
        old = (torch.randperm(len(self.old), generator=generator) if shuffle else torch.arange(len(self.old)))
        rows = torch.cat([torch.arange(n), old[: self.replayed] + n])
        if shuffle:
            rows = rows[torch.randperm(len(rows), generator=generator)]
        for start in range(0, len(rows), batch_size):
            yield self.table.batch(rows[start:start + batch_size])

    def shard(self, rank: int, world_size: int) -> ReplaySource:
        raise MsrecError("extend.replay trains in one process (msrec extend is not run under torchrun)")
