"""A benchmark spec (YAML, unknown keys are errors) and the grid of run configs it resolves to.

    title: MovieLens 100K            # optional, heads the report
    config: ../../configs/x.yaml     # optional base run config (its model section is ignored) ...
    data: {dataset: movielens-100k}  # ... and/or inline sections merged over it
    train: {epochs: 10, batch_size: 2048}
    models:                          # `all` (every registered model) or a list of names / entries
      - dnn
      - {name: star, label: star-wide, options: {hidden: [512, 256]}, train: {lr: 0.002}}
    seeds: 3                         # a count (train.seed, train.seed + 1, ...) or a list of seeds
    resplit: false
    reference: dnn
    bootstrap: 1000
    tune: {trials: 20}               # optional: tune each model on the validation split first (docs/tuning.md)

Every key's meaning is its field's docstring below (`spec_reference` renders them for docs/benchmark.md).

**The split.** The seed drives both the data split and the initialisation. By default (`resplit: false`)
the split is fixed for the whole grid (`data.split_seed`, or the first seed when unset): every model and
every seed is tested on the same rows, so the spread over seeds is training noise only, the data is
encoded once, and per-row paired comparisons are exact. With `resplit: true` each seed also draws its own
split (and the data is re-encoded per seed), so the spread includes split noise as well.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from msrec.config import Config, format_validation_error, load_config, parse_config, read_yaml, resolve_data_paths
from msrec.errors import MsrecError, first_problem
from msrec.models import list_models
from msrec.models.registry import parse_options
from msrec.tune.settings import TuneSettings

LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
TUNED = "-tuned"  # the suffix of a tuned model's label


class _SpecPart(BaseModel):
    # the field docstrings are the keys' documentation (docs/benchmark.md is rendered from them)
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ModelSpec(_SpecPart):
    """One row of the grid: a registered model, its options and training overrides."""

    name: str
    """A registered model (`msrec models`)."""
    label: str | None = None
    """How the report names it (default: the name); distinct labels let one model appear twice."""
    options: dict[str, Any] = Field(default_factory=dict)
    """The model's options, as in a run config's model section (`docs/models/`)."""
    train: dict[str, Any] = Field(default_factory=dict)
    """Train keys for this model only, over the spec's `train` (all but `seed`, which `seeds` sets)."""

    @property
    def key(self) -> str:
        return self.label or self.name


class BenchmarkSpec(_SpecPart):
    title: str | None = None
    """Heads the report (default: the dataset's name)."""
    config: str | None = None
    """A run config file (relative to the spec's folder) whose data and train sections are the base;
    its model section is ignored."""
    data: dict[str, Any] | None = None
    """A data section, merged over the config's; its relative paths are read from the spec's folder."""
    train: dict[str, Any] | None = None
    """A train section, merged over the config's, for every model."""
    models: list[ModelSpec] | None = None
    """`all` (every registered model, the default) or a list of model names and entries
    `{name, label, options, train}`."""
    seeds: int | list[int] = 3
    """A count (train.seed, train.seed + 1, ...) or a list of distinct seeds: every model runs once per seed."""
    resplit: bool = False
    """false: one split for the whole grid (data.split_seed, else the first seed); true: each seed draws its
    own split, so the spread over seeds holds split noise too."""
    reference: str = "dnn"
    """The model (label) every other one is compared with in the difference tables."""
    bootstrap: int = Field(1000, ge=100)
    """Bootstrap replicates behind the 95% intervals of the differences."""
    tune: TuneSettings | None = None
    """Tune each model before the grid (`{trials: N, space: ...}`, the `tune:` keys of docs/tuning.md): an Optuna
    study on the validation split of the first seed, trial 0 = the model as given; each model then runs twice
    per seed, as given and as tuned (label `<label>-tuned`), and the report sets them side by side."""

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        """`all` is stored as None; a bare name is an entry with only a name."""
        if v == "all":
            return None
        if not isinstance(v, list):
            raise ValueError("expected `all` or a list of model names / entries")  # noqa: TRY004 (pydantic reports ValueError)
        return [{"name": m} if isinstance(m, str) else m for m in v]

    @field_serializer("models")
    def _dump_models(self, models: list[ModelSpec] | None) -> str | list:
        if models is None:
            return "all"
        return [m.name if m.key == m.name and not (m.options or m.train) else m.model_dump(exclude_defaults=True)
                for m in models]

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError("seeds: need at least one")
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("seeds: need a non-empty list of distinct seeds")
        return v

    def to_yaml(self) -> str:
        """The spec as written into the output folder and the report."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


@dataclass
class Grid:
    """A resolved spec: the run configs in the order they are run (seed by seed, all models per seed)."""

    spec: BenchmarkSpec
    title: str
    labels: list[str]
    models: dict[str, str]  # label -> registered model name
    seeds: list[int]
    configs: dict[str, Config]  # run id -> config
    order: list[tuple[str, str, int]]  # (run id, label, seed)
    source: str  # where the spec came from, for the report
    tuned: dict[str, str] = field(default_factory=dict)  # with `tune`: a label -> its tuned twin's label


def run_id(label: str, seed: int) -> str:
    return f"{label}--seed{seed}"


def spec_reference() -> str:
    """The spec keys as Markdown tables (docs/benchmark.md holds this text; a test keeps them equal)."""
    lines = []
    for cls, defaults in ((BenchmarkSpec, BenchmarkSpec().model_dump(mode="json")), (ModelSpec, {})):
        lines += ["| key | default | meaning |", "|---|---|---|"]
        for name, f in cls.model_fields.items():
            value = defaults.get(name)
            default = "required" if f.is_required() else "-" if value is None else \
                f"`{value if isinstance(value, str) else json.dumps(value)}`"
            lines.append(f"| `{name}` | {default} | {' '.join(f.description.split())} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- reading
def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _spec_error(err: ValidationError, source: str) -> str:
    """The config's one-line message; an unknown key also lists the keys allowed where it stands."""
    where, unknown, _ = first_problem(err)
    message = format_validation_error(err, source)
    if unknown:
        fields = ModelSpec.model_fields if where.startswith("models.") else BenchmarkSpec.model_fields
        message += f" (allowed: {', '.join(fields)})"
    return message


def load_spec(spec: str | Path | dict | BenchmarkSpec) -> tuple[BenchmarkSpec, Path, str]:
    """The validated spec, the folder its relative paths are read from, and a name for messages."""
    if isinstance(spec, BenchmarkSpec):
        return spec, Path.cwd(), "benchmark spec"
    if isinstance(spec, dict):
        raw, base, source = spec, Path.cwd(), "benchmark spec"
    else:
        path = Path(spec)
        raw, base, source = read_yaml(path, "benchmark spec"), path.parent, str(path)
    if not isinstance(raw, dict):
        raise MsrecError(f"{source}: expected a mapping (config/data/train, models, seeds)")
    try:
        return BenchmarkSpec.model_validate(raw), base, source
    except ValidationError as err:
        raise MsrecError(_spec_error(err, source)) from None


def _base_config(spec: BenchmarkSpec, base: Path, source: str) -> dict:
    raw: dict[str, Any] = {}
    if spec.config:
        path = Path(spec.config)
        path = path if path.is_absolute() or path.exists() else base / path
        raw = load_config(path).to_dict()
        raw.pop("model", None)
    if spec.data:  # inline paths are relative to the spec, like a config's
        raw["data"] = _merge(raw.get("data", {}), resolve_data_paths(spec.data, base))
    if spec.train:
        raw["train"] = _merge(raw.get("train", {}), spec.train)
    if "data" not in raw:
        raise MsrecError(f"{source}: needs a `config` file or a `data` section")
    return raw


def _entries(spec: BenchmarkSpec, only: list[str] | None, source: str) -> list[ModelSpec]:
    """The spec's models (or the `only` ones), checked: distinct labels, known options, no per-model seed."""
    entries = [ModelSpec(name=e.name) for e in list_models()] if spec.models is None else list(spec.models)
    if only:
        unknown = [o for o in only if not any(o in (e.key, e.name) for e in entries)]
        if unknown:
            raise MsrecError(f"--model {', '.join(unknown)}: not in {source} (has {', '.join(e.key for e in entries)})")
        entries = [e for e in entries if e.key in only or e.name in only]
    if not entries:
        raise MsrecError(f"{source}: `models` is empty")
    labels = [e.key for e in entries]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise MsrecError(f"{source}: models: `{dupes[0]}` appears twice; give the variants distinct `label`s")
    for e in entries:
        if not LABEL_RE.match(e.key):
            raise MsrecError(f"{source}: models: label `{e.key}` may use only letters, digits, `_`, `-` and `.`")
        if "seed" in e.train:
            raise MsrecError(f"{source}: models: {e.key}: `train.seed` is set by `seeds`, not per model")
        parse_options(e.name, e.options)
    return entries


def resolve_grid(spec: str | Path | dict | BenchmarkSpec, only: list[str] | None = None) -> Grid:
    """Every run's config, validated before anything trains (a typo must not surface hours later)."""
    spec, base, source = load_spec(spec)
    raw = _base_config(spec, base, source)
    base_cfg = parse_config({**raw, "model": {"name": "dnn"}}, source)
    if spec.resplit and base_cfg.data.split_seed is not None:
        raise MsrecError(f"{source}: `resplit: true` draws a split per seed; remove data.split_seed")
    if spec.tune and spec.resplit:
        raise MsrecError(f"{source}: `tune` tunes on one validation split; it needs `resplit: false`")
    entries = _entries(spec, only, source)
    tuned = {e.key: e.key + TUNED for e in entries} if spec.tune else {}
    if any(t in {e.key for e in entries} for t in tuned.values()):
        raise MsrecError(f"{source}: with `tune`, the labels ending in `{TUNED}` are the tuned models'")
    seeds = spec.seeds if isinstance(spec.seeds, list) else [base_cfg.train.seed + k for k in range(spec.seeds)]
    split_seed = base_cfg.data.split_seed if base_cfg.data.split_seed is not None else seeds[0]
    configs, order = {}, []
    for seed in seeds:
        for e in entries:
            run = copy.deepcopy(raw)
            run["model"] = {"name": e.name, **e.options}
            run["train"] = {**run.get("train", {}), **e.train, "seed": seed, "progress": False}
            run["data"]["split_seed"] = seed if spec.resplit else split_seed
            rid = run_id(e.key, seed)
            configs[rid] = parse_config(run, f"{source} (model {e.key}, seed {seed})")
            order.append((rid, e.key, seed))
            if e.key in tuned:  # the model's config until the runner has tuned it (bench.tuning)
                configs[run_id(tuned[e.key], seed)] = configs[rid]
                order.append((run_id(tuned[e.key], seed), tuned[e.key], seed))
    title = spec.title or (base_cfg.data.dataset or Path(base_cfg.data.train or "data").stem)
    labels = [x for e in entries for x in (e.key, *([tuned[e.key]] if tuned else []))]
    return Grid(spec, title, labels, {x: e.name for e in entries for x in (e.key, tuned.get(e.key, e.key))},
                seeds, configs, order, source, tuned)
