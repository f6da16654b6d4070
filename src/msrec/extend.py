"""`msrec extend RUN --data NEW.csv --out RUN2`: a trained run learns scenarios it has never seen, without a
full retrain and without changing how it scores the old ones (docs/scenarios.md, "Onboarding a new scenario").

1. The encoder grows (`Encoder.grown`): new scenarios and new values of the indicators and of the fields
   `extend.vocab` picks (`auto`, the default: those whose new values fill half of NEW's rows, e.g. a new
   scenario's own users) get ids appended after the old ones, so every old value keeps its id.
2. The model grows (msrec.nn.grow): every part with per-scenario stacked tensors appends rows for the new
   scenarios copied from a source scenario (the parent level's in a hierarchy, else the old scenario whose
   parameters score the new rows best); new indicator ids copy their field's unknown row. The grown,
   untrained model is therefore exactly the old model scoring the new rows as unknown, routed to the source.
3. Only the new rows train (gradient hooks on the grown tensors, everything else frozen); afterwards every
   old value is put back bit for bit (frozen batch norms' running statistics move in training mode). The
   training is sized by the new rows (`training_defaults`). `--set extend.all=true` trains everything;
   `--set extend.replay=R` adds a phase in which everything trains on the new rows plus R old training rows
   per new one (after the new entries' phase; with extend.all instead of it): see `_train`.
4. metrics.json's `extend` block compares the new scenarios against the old model scoring them as unknown
   (the grown model before training) and a model trained from scratch on the old training rows plus the new
   ones, with paired bootstrap intervals (msrec.report.stats).

RUN is only read; RUN2 is written atomically as any run (msrec.runs.write_run).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from rich.console import Console

from msrec.api import as_config
from msrec.config import Config
from msrec.data.encode import Encoder
from msrec.data.prepare import EncodedData, RawSplits, _encoder
from msrec.data.table import TensorTable
from msrec.errors import MsrecError
from msrec.extend_data import ReplaySource, growing_fields, old_splits, read_new, sources
from msrec.models.registry import build_model
from msrec.nn.grow import field_sizes
from msrec.report.stats import paired_differences, replicate_metrics
from msrec.runs import Run, check_run_dir_free, load_run, write_run
from msrec.train.metrics import monitor_value
from msrec.train.predict import Scorer
from msrec.train.trainer import Trainer

OPTIONS = {"extend.all": False, "extend.scratch": True, "extend.replicates": 1000, "extend.vocab": "auto",
           "extend.replay": 0}
# The extension's training is sized by NEW's training rows, not by the run's (a batch of 1,024-4,096 rows
# gives a scenario of a few thousand rows a handful of steps): about STEPS_PER_EPOCH steps per epoch
# (batches of at least MIN_BATCH rows, at most the run's), up to EPOCHS epochs, early stopping on the
# validation log loss (smoother than the AUC of a few hundred rows) with PATIENCE, and LR_FACTOR times the
# run's learning rate (only the new entries train, and they start from another scenario's values: they
# have far to go and nothing old to disturb). Measured in docs/scenarios.md; `--set train.*` wins.
STEPS_PER_EPOCH, MIN_BATCH, EPOCHS, PATIENCE, MONITOR, LR_FACTOR = 50, 32, 30, 5, "logloss", 10
# extend.replay's second phase (every parameter, on NEW's rows and the replayed old ones) fine-tunes a trained
# model: REPLAY_LR times the run's learning rate (the run's own rate made the new scenario's validation loss
# worse from the first epoch). Measured in docs/scenarios.md.
REPLAY_LR = 0.1


def _options(overrides: list[str]) -> tuple[dict, list[str]]:
    """`extend.*` items (this command's own) and the rest (`train.*` etc., applied to the run's config)."""
    opts, rest = {k.split(".", 1)[1]: v for k, v in OPTIONS.items()}, []
    for item in overrides:
        key, _, value = item.partition("=")
        if key.startswith("model."):
            raise MsrecError(f"--set {item}: extend keeps the run's model; only train.* and extend.* can be set")
        if not key.startswith("extend."):
            rest.append(item)
        elif key not in OPTIONS:
            raise MsrecError(f"--set {item}: unknown extend key (known: {', '.join(OPTIONS)})")
        else:
            default = OPTIONS[key]
            try:
                opts[key.split(".", 1)[1]] = (value.lower() in ("1", "true", "yes") if isinstance(default, bool)
                                              else type(default)(value))
            except ValueError:
                raise MsrecError(f"--set {item}: expected a {type(default).__name__}") from None
    return opts, rest


def training_defaults(run_cfg: Config, rows: int, lr_factor: float = LR_FACTOR) -> list[str]:
    """The extension's `train.*` defaults for `rows` training rows an epoch (`--set train.*` items override
    them): `lr_factor` times the run's learning rate (with `extend.all`, old parameters train too: 1)."""
    batch = max(MIN_BATCH, min(run_cfg.train.batch_size, rows // STEPS_PER_EPOCH))
    return [f"train.batch_size={batch}", f"train.epochs={max(EPOCHS, run_cfg.train.epochs)}",
            f"train.patience={PATIENCE}", f"train.monitor={MONITOR}", f"train.lr={lr_factor * run_cfg.train.lr}"]


def grow_model(run: Run, grown: Encoder, source: list[int]) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The run's model with rows for the new scenarios and indicator ids, built for the grown encoder, and a
    mask of the new entries of every grown tensor (state-dict name -> bool mask broadcastable to it)."""
    model, name, spec = run.model, run.config.model.name, grown.spec()
    before = {k: v.shape for k, v in model.state_dict().items()}
    sizes = [*spec.sparse_vocab, *spec.list_vocab]
    index = torch.tensor(source, dtype=torch.long)
    fresh = build_model(name, spec, run.config.model.options())
    tables = {}
    for prefix, part in model.named_modules():
        if hasattr(part, "grow_scenarios"):
            part.grow_scenarios(index)
        if hasattr(part, "grow_levels"):  # a level shared by combinations (nn.levels): new values start as identity
            old_rows = [p.shape[0] for p in part.parts]
            part.grow_levels([p.shape[0] for p in fresh.get_submodule(prefix).parts])
            for level, rows in enumerate(old_rows):
                if part.parts[level].shape[0] > rows:  # the new values' parts train, like new own slices
                    tables[f"{prefix}.parts.{level}"] = (torch.arange(part.parts[level].shape[0]) >= rows).view(
                        -1, *[1] * (part.parts[level].dim() - 1))
        if hasattr(part, "grow_vocab"):  # new ids start as their field's unknown row 0
            old = field_sizes(part.offsets, part.table.weight.shape[0])
            part.grow_vocab(sizes, [torch.zeros(size, dtype=torch.long) for size in sizes])
            new = field_sizes(part.offsets, part.table.weight.shape[0])
            mask = torch.cat([torch.arange(b) >= a for a, b in zip(old, new, strict=True)]
                             + [torch.zeros(part.table.weight.shape[0] - sum(new), dtype=torch.bool)])
            tables[f"{prefix}.table.weight".lstrip(".")] = mask.unsqueeze(1)
    state = model.state_dict()
    for key, tensor in fresh.state_dict().items():
        if key not in state or state[key].shape != tensor.shape:
            raise MsrecError(f"model {name}: `{key}` cannot grow by new scenarios (shape "
                             f"{tuple(state[key].shape) if key in state else None}, the grown model needs "
                             f"{tuple(tensor.shape)}); msrec extend supports models whose per-scenario parts "
                             "define grow_scenarios (docs/scenarios.md)")
    fresh.load_state_dict(state, strict=True)
    masks = dict(tables)
    for key, shape in before.items():
        if key not in masks and state[key].shape != shape and shape[0] != len(run.encoder.scenario_names):
            raise MsrecError(f"model {name}: `{key}` grew as if per scenario but holds {shape[0]} rows for "
                             f"{len(run.encoder.scenario_names)} scenarios (a part reused for another axis)")
        if key not in masks and state[key].shape != shape:
            mask = torch.zeros(state[key].shape[0], dtype=torch.bool)
            mask[shape[0]:] = True
            masks[key] = mask.view(-1, *[1] * (len(shape) - 1))
    return fresh, masks


def _freeze(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> list:
    """Only the masked (new) entries get a gradient: other parameters are frozen, grown ones hooked (the hooks'
    handles are returned: `_thaw` removes them)."""
    handles = []
    for key, param in model.named_parameters():
        if key not in masks:
            param.requires_grad_(False)
            continue
        keep = masks[key].to(param.device)

        def hook(grad: torch.Tensor, keep: torch.Tensor = keep) -> torch.Tensor:
            if grad.is_sparse:  # a row-sparse table's gradient: drop the old rows
                g = grad.coalesce()
                rows = keep.flatten()[g.indices()[0]]
                return torch.sparse_coo_tensor(g.indices()[:, rows], g.values()[rows], g.shape, is_coalesced=True,
                                               check_invariants=False)
            return grad * keep

        handles.append(param.register_hook(hook))
    return handles


def _thaw(model: torch.nn.Module, handles: list) -> None:
    """Every parameter trainable again, without `_freeze`'s hooks."""
    for handle in handles:
        handle.remove()
    for param in model.parameters():
        param.requires_grad_(True)


@torch.no_grad()
def _restore(model: torch.nn.Module, before: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """Every entry that is not new back to its value before training (bit for bit)."""
    for key, tensor in model.state_dict().items():
        keep = masks.get(key)
        old = before[key].to(tensor.device)
        tensor.copy_(old if keep is None else torch.where(keep.to(tensor.device), tensor, old))


def _scratch(old: RawSplits, cfg: Config, new: dict[str, pa.Table], test: pa.Table, console: Console | None
             ) -> np.ndarray:
    """Baseline (b): the run's model trained from scratch on its own training rows (`old`) plus NEW's, scored on
    NEW's test rows. Its encoder is fitted on the combined training rows, as `msrec train` would."""

    def joined(split: str) -> pa.Table:
        base = old.tables[split]
        try:
            extra = new[split].select(base.column_names).cast(base.schema)
        except (pa.ArrowInvalid, KeyError, ValueError) as err:
            raise MsrecError(f"NEW data's columns do not match the run's training data ({err})") from None
        return pa.concat_tables([base, extra])

    encoder = _encoder(cfg.data, old.schema).fit(joined("train"), "old + new training rows")
    data = EncodedData(encoder, encoder.transform(joined("train")), encoder.transform(joined("val")))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.name, encoder.spec(), cfg.model.options())
    trainer = Trainer(model, cfg.train, encoder.scenario_names, list(encoder.schema.labels), console)
    trainer.fit(data.train, data.val)
    return trainer.scorer.predict(encoder.transform(test, "new test rows")).numpy()


def _train(model: torch.nn.Module, masks: dict[str, torch.Tensor], before: dict[str, torch.Tensor], opts: dict,
           cfg: Config, run: Run, rest: list[str], grown: Encoder, tables: dict[str, TensorTable],
           old: RawSplits | None, console: Console | None) -> tuple[Trainer, dict, Config, dict]:
    """The extension's training. Without extend.all, first the new entries alone on NEW's rows (`cfg`), every old
    entry put back afterwards. With extend.all or extend.replay, (then) every parameter on NEW's training rows
    plus `extend.replay` old training rows per new one, at the run's learning rate, sized by those rows; after
    a first phase, the second is kept only if it lowers the new scenarios' validation loss (an early stop at
    its epoch 0). Returns the last trainer, the first phase's metrics and config, and the `extend` block's
    `replay_rows` / `phase2` entries."""
    names, tasks = grown.scenario_names, list(grown.schema.labels)
    fit_metrics, first = None, None
    if not opts["all"]:
        handles = _freeze(model, masks)
        torch.manual_seed(cfg.train.seed)
        trainer = Trainer(model, cfg.train, names, tasks, console)
        fit_metrics, _ = trainer.fit_and_score(EncodedData(grown, tables["train"], tables["val"], tables.get("test")))
        _restore(model, before, masks)
        if not opts["replay"]:
            return trainer, fit_metrics, cfg, {}
        _thaw(model, handles)
        first = ({k: v.clone() for k, v in model.state_dict().items()}, trainer.scorer.evaluate(tables["val"]))
    source = tables["train"]
    if opts["replay"]:
        replayed = grown.transform(old.tables["train"], "the run's training rows (extend.replay)")
        source = ReplaySource(tables["train"], replayed, opts["replay"])
    every = as_config(run.config, [*training_defaults(run.config, len(source), 1 if first is None else REPLAY_LR),
                                   *rest])
    torch.manual_seed(every.train.seed)
    trainer = Trainer(model, every.train, names, tasks, console)
    metrics, _ = trainer.fit_and_score(EncodedData(grown, source, tables["val"], tables.get("test")))
    replay_rows = {"replay_rows": len(source) - len(tables["train"])}
    if first is None:
        return trainer, metrics, every, replay_rows
    kept = monitor_value(metrics["val"], every.train.monitor) > monitor_value(first[1], every.train.monitor)
    if not kept:
        model.load_state_dict(first[0])
    return trainer, fit_metrics, cfg, {**replay_rows, "phase2": {"kept": kept, "epochs": metrics["train"]["epochs"],
        "best_epoch": metrics["train"]["best_epoch"],
        "training": {k: getattr(every.train, k) for k in ("batch_size", "epochs", "patience", "monitor", "lr")}}}


def _compare(table: TensorTable, new_ids: list[int], names: list[str], tasks: list[str],
             scores: dict[str, np.ndarray], replicates: int, seed: int) -> dict:
    """Per task and new scenario (and all new rows): each model's AUC and extend minus each baseline with its
    paired bootstrap interval (the same resampled rows for every model)."""
    rows = torch.isin(table.scenario, torch.tensor(new_ids)).numpy()
    local = np.searchsorted(np.array(new_ids), table.scenario.numpy()[rows])
    columns = [names[s] for s in new_ids]
    out = {}
    for j, task in enumerate(tasks):
        y = table.labels[:, j].numpy()[rows]
        reps = {m: replicate_metrics(y, s[rows, j], local, columns, replicates, seed)["auc"] for m, s in scores.items()}
        block = {}
        for col in [*columns, "overall"]:
            entry = {f"{m}_auc": float(np.nanmean(reps[m][col])) for m in scores}
            for base in (m for m in scores if m != "extend"):
                diff = reps["extend"][col] - reps[base][col]
                d = paired_differences(np.array([[np.nanmean(diff)]]), diff[None, :, None], True, seed)[0]
                entry[f"vs_{base}"] = {"delta": d.delta, "low": d.low, "high": d.high, "p_value": d.p_value}
            block[col] = entry
        out[task] = block
    return out


def extend(run_dir: str | Path, data: str | Path, out: str | Path, overrides: list[str] | None = None,
           console: Console | None = None) -> dict:
    """Extend the run in `run_dir` by the scenarios of `data` unseen in its training; write the run `out`
    (see the module's doc). `overrides`: `train.*` items for the extension's training, and `extend.all=true`
    (train every parameter), `extend.scratch=false` (no from-scratch baseline), `extend.replicates=N`,
    `extend.vocab=auto|all|indicators` (which fields' unseen values get ids), `extend.replay=R` (every parameter
    also trains on R of the run's training rows per new one; see `_train`). Returns RUN2's metrics (its
    `extend` block holds the comparison and the training used)."""
    return extend_scored(run_dir, data, out, overrides, console)[0]


def extend_scored(run_dir: str | Path, data: str | Path, out: str | Path, overrides: list[str] | None = None,
                  console: Console | None = None) -> tuple[dict, dict]:
    """`extend`, and the rows its comparison is computed on (benchmarks pool them over seeds): NEW's test rows
    of the new scenarios, `{"labels": [N, T], "scenario": [N], "scores": {model: [N, T]}}` (numpy)."""
    opts, rest = _options(overrides or [])
    out = Path(out)
    if out.resolve() == Path(run_dir).resolve():
        raise MsrecError(f"{out}: extend never modifies its run; choose another --out")
    check_run_dir_free(out, overwrite=False)
    run = load_run(run_dir)
    new = read_new(data, run, as_config(run.config, rest))
    lr_factor = 1 if opts["all"] else LR_FACTOR
    cfg = as_config(run.config, [*training_defaults(run.config, new["train"].num_rows, lr_factor), *rest])
    if opts["replay"] < 0:
        raise MsrecError(f"--set extend.replay={opts['replay']}: expected 0 or more old rows per new one")
    old_s = len(run.encoder.scenario_names)
    if opts["vocab"] not in ("auto", "indicators", "all"):
        raise MsrecError(f"--set extend.vocab={opts['vocab']}: expected auto, indicators or all")
    grown = run.encoder.grown(new["all"], str(data), growing_fields(run, new, str(data), opts["vocab"]))
    names = grown.scenario_names
    new_ids = list(range(old_s, len(names)))
    if not new_ids:
        raise MsrecError(f"{data}: no scenario unseen in the training of {run_dir} (its scenarios: "
                         f"{', '.join(names[:20])}); extend adds new scenarios, `msrec train` retrains old ones")
    tables = {k: grown.transform(t, f"{data} ({k} split)") for k, t in new.items() if k != "all"}
    source = sources(run, grown, tables["train"], old_s)
    model, masks = grow_model(run, grown, source)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    test = tables.get("test", tables["val"])
    scores = {"unknown": Scorer(model, names, list(grown.schema.labels)).predict(test).numpy()}
    why = " and ".join(w for w, on in (("extend.replay", opts["replay"]), ("the from-scratch baseline", opts["scratch"]))
                       if on)
    old = old_splits(run, why) if why else None
    trainer, fit_metrics, cfg, phases = _train(model, masks, before, opts, cfg, run, rest, grown, tables, old, console)
    metrics = {split: trainer.scorer.evaluate(t) for split, t in (("val", tables["val"]), ("test", tables.get("test")))
               if t is not None}
    scores["extend"] = trainer.scorer.predict(test).numpy()
    if opts["scratch"]:  # the run's own config: what a full retrain would be
        scores["scratch"] = _scratch(old, run.config, new, new.get("test", new["val"]), console)
    model.cpu()
    for p in model.parameters():
        p.requires_grad_(True)
    metrics.update(train=fit_metrics["train"], model=cfg.model.name, extend={
        "from": str(Path(run_dir).resolve()), "all": opts["all"], "replay": opts["replay"], **phases,
        "new_scenarios": [names[s] for s in new_ids],
        "source": {names[s]: names[src] for s, src in zip(new_ids, source, strict=True)},
        "training": {k: getattr(cfg.train, k) for k in ("batch_size", "epochs", "patience", "monitor", "lr")},
        "trained_parameters": sum(int(m.expand_as(before[k]).sum()) for k, m in masks.items())
        if not (opts["all"] or phases.get("phase2", {}).get("kept", opts["replay"]))
        else sum(p.numel() for p in model.parameters()),
        "comparison": _compare(test, new_ids, names, list(grown.schema.labels), scores, opts["replicates"],
                               cfg.train.seed)})
    data_cfg = cfg.data.model_copy(update={"dataset": None, "path": None, "options": {}, "val": None, "test": None,
                                           "train": os.path.abspath(data), **grown.schema.to_dict()})
    write_run(out, cfg.model_copy(update={"data": data_cfg}), grown, model, metrics)
    rows = torch.isin(test.scenario, torch.tensor(new_ids)).numpy()
    return metrics, {"labels": test.labels.numpy()[rows], "scenario": test.scenario.numpy()[rows],
                     "scores": {m: v[rows] for m, v in scores.items()}}
