"""The run configuration: one YAML file with `data`, `model` and `train` sections, validated by pydantic.

Unknown keys are errors (a misspelt `batch_sise` must not silently fall back to a default). The model
section is checked twice: here for its common keys, and by the registry against the chosen model's own
typed options class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from msrec.errors import MsrecError, first_problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)  # docstrings: the README reference


class DataConfig(_Strict):
    """Where the data is and what each column means.

    Either `train` (with optional `val` / `test`) or `dataset` (a built-in name, with `path` and
    `options`). Schema keys left unset take the built-in dataset's defaults.
    """

    dataset: str | None = None
    """A built-in dataset's name (`msrec datasets`), instead of `train` paths."""
    path: str | None = None
    """The built-in dataset's folder or file (MovieLens: downloaded there when absent)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """The built-in dataset's own options, e.g. `scenarios: [...]` to keep only some."""
    train: str | None = None
    """Training data: a CSV or Parquet file (with `streaming`, also a folder of Parquet files)."""
    val: str | None = None
    """Validation data (optional: without it, a seeded split of `train`)."""
    test: str | None = None
    """Test data (optional)."""
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Train/val/test fractions of `train` when `val` / `test` are not given."""
    split_seed: int | None = None
    """Seed of that split (null: `train.seed`)."""
    sparse: list[str] | None = None
    """Categorical id columns, one embedding each."""
    dense: list[str] | None = None
    """Numeric columns, standardised with the training split's mean/std; missing: 0 plus a flag."""
    lists: dict[str, str] | None = None
    """Multi-hot columns and their separator, e.g. `{genres: "|"}` (text `a|b`; a Parquet list column as is)."""
    list_max_len: int = 32
    """Longest list kept (the longest training list, at most this)."""
    scenario: str | list[str] | None = None
    """The column whose values are the scenarios, or several columns, top level first (e.g. `[country,
    placement]`): the scenario is their combination, reported per combination and per level (docs/evaluation.md)."""
    min_scenario_rows: int = Field(0, ge=0)
    """With several scenario columns: a combination with fewer training rows than this gets no id of its own and
    falls back to its first-level value alone (e.g. `US/*`); 0: every combination seen in training has its own."""
    scenario_features: list[str] | None = None
    """Indicator features that scenario-aware parts read (null: the scenario column)."""
    labels: list[str] | None = None
    """One 0/1 label column per task."""
    user: str | None = None
    """The user id column (optional): enables GAUC."""
    truth: dict[str, str] | None = None
    """A column of true probabilities per label (optional): enables the oracle AUC."""
    min_freq: int = 1
    """Ids seen fewer times in training map to index 0 (unknown)."""
    hash_buckets: dict[str, int] = Field(default_factory=dict)
    """Sparse columns whose ids are hashed instead of looked up, and their number of buckets, e.g. `{user_id:
    1000000}`: a stable hash of the id's text, no vocabulary stored, an id never seen in training still gets a
    bucket (docs/datasets.md)."""
    missing_ids: Literal["error", "unknown", "category"] = Field("category", description=(
        "A blank id in a sparse column (empty, NaN, null): `category` = a value of its own, learned like any "
        "other; `unknown` = the unknown id; `error` = stop, naming the row. A missing scenario is always an error."))
    streaming: bool = False
    """Train from Parquet row groups, for data larger than memory (needs `train` and `val`)."""
    shuffle_buffer: int = Field(1_000_000, ge=1)
    """Rows held for the streaming shuffle."""

    @model_validator(mode="after")
    def _source(self) -> DataConfig:
        if self.dataset is None and self.train is None:
            raise ValueError("data needs either `train` (a CSV/Parquet path) or `dataset` (a built-in name)")
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0:
            raise ValueError(f"data.split must be three non-negative fractions summing to 1, got {self.split}")
        if self.streaming and (self.train is None or self.val is None):
            raise ValueError("data.streaming needs `train` (a Parquet file or folder) and `val` paths")
        if self.min_freq < 1:
            raise ValueError("data.min_freq must be >= 1")
        if any(n < 1 for n in self.hash_buckets.values()):
            raise ValueError(f"data.hash_buckets must be >= 1 per column, got {self.hash_buckets}")
        return self


class ModelConfig(BaseModel):
    """`name` picks the model; every other key is one of that model's options (checked by the registry)."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)
    name: str = "dnn"
    """The model (`msrec models`); the other keys are its options (`msrec models NAME`)."""

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EmbeddingOptimizerConfig(_Strict):
    """How the embedding tables are updated (docs/embeddings.md)."""

    name: Literal["rowwise_adagrad", "adam", "sgd", "dense"] = "rowwise_adagrad"
    """Row-sparse (a step reads and updates only the rows its batch uses, weights and optimizer state):
    `rowwise_adagrad` (one state value per row), `adam` (lazy Adam: two values per weight), `sgd` (no state);
    `dense`: the tables join `train.optimizer` (every row every step, weight decay applies)."""
    lr: float | None = Field(None, gt=0)
    """Learning rate of the tables (null: `train.lr`; 10 x `train.lr` for `rowwise_adagrad`, whose steps shrink as a
    row's squared gradients add up)."""


class CheckpointConfig(_Strict):
    """Checkpoints of the whole training state, for `msrec train --resume` after a kill (docs/checkpoints.md)."""

    every_steps: int | None = Field(None, ge=1)
    """Write a checkpoint every this many training steps (null: not by steps)."""
    every_minutes: float | None = Field(10.0, gt=0)
    """Write a checkpoint when this many minutes of training passed since the last one (null: not by time); a
    run shorter than this writes none."""
    keep: int = Field(2, ge=1)
    """Checkpoints kept (the newest); older ones are deleted after each write."""
    keep_after: bool = False
    """Keep the checkpoints once the run finished (default: deleted when the run directory is written)."""


class TrackingConfig(_Strict):
    """Experiment tracking of each run (docs/tracking.md): off unless a destination is given."""

    mlflow_uri: str | None = None
    """MLflow tracking URI: `sqlite:///mlflow.db`, a folder (a file store; msrec sets `MLFLOW_ALLOW_FILE_STORE=true`
    for it) or a server's `http(s)://` address (null: no MLflow)."""
    experiment: str = "msrec"
    """The MLflow experiment that holds the runs (created when absent)."""
    tensorboard_dir: str | None = None
    """A folder for TensorBoard event files, one subfolder per run (null: no TensorBoard)."""


class TrainConfig(_Strict):
    """How to train: optimizer and schedule, early stopping, devices."""

    epochs: int = Field(10, ge=1)
    """Most epochs to train (early stopping may end sooner)."""
    batch_size: int = Field(4096, ge=1)
    """Rows per training step (over all ranks when distributed)."""
    eval_batch_size: int = Field(65536, ge=1)
    """Rows per scoring step (validation, test, predict)."""
    lr: float = Field(0.001, gt=0)
    """Learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """Weight decay (decoupled with `adamw`); not of row-sparse embedding tables (`embedding_optimizer`)."""
    optimizer: Literal["adam", "adamw"] = "adam"
    """The optimizer (of every parameter but the embedding tables with a row-sparse `embedding_optimizer`)."""
    embedding_optimizer: EmbeddingOptimizerConfig = Field(default_factory=EmbeddingOptimizerConfig)
    """The embedding tables' optimizer (docs/embeddings.md)."""
    scenario_updates: Literal["row_sparse", "dense"] = "row_sparse"
    """Per-scenario stacked parameters (towers, gates, STAR's `W_s`): `row_sparse` updates only the scenarios a
    batch holds (lazy Adam / AdamW, weight decay on those slices), `dense` every scenario each step with
    `optimizer` (docs/scenarios.md, "Cost of a step")."""
    embedding_sharding: Literal["none", "torchrec"] = "none"
    """Distributed runs: `none` keeps the whole embedding table on every rank (DDP); `torchrec` holds it once
    across the ranks, split by TorchRec's planner (docs/distributed.md; needs the `torchrec` extra)."""
    scheduler: Literal["none", "cosine", "step"] = "none"
    """Learning-rate schedule: constant, cosine to 0 over the epochs, or times `step_gamma` per epoch."""
    step_gamma: float = 0.5
    """Learning-rate factor per epoch with `scheduler: step`."""
    warmup_epochs: int = Field(0, ge=0)
    """Epochs of linear learning-rate warm-up first."""
    patience: int = Field(3, ge=1)
    """Epochs without improvement of `monitor` before training stops."""
    monitor: Literal["macro_auc", "auc", "logloss"] = "macro_auc"
    """Validation metric that picks the best epoch and drives early stopping."""
    seed: int = 2022
    """Seed of initialisation and batch order (and of the split without `data.split_seed`)."""
    task_weights: list[float] | None = None
    """Loss weight per task (null: 1 each)."""
    threads: int | None = None
    """CPU threads of torch (null: torch's default)."""
    progress: bool = True
    """Show a progress bar per epoch."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: the GPU when CUDA is present (one per rank), else the CPU."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """`bf16`: autocast forward passes (loss and optimizer in fp32)."""
    dist_timeout: float = Field(1800, gt=0)
    """Seconds a distributed rank waits on its peers before failing."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Periodic checkpoints of the training state, beside the run directory (`--resume` continues from them)."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Per-epoch loss, validation metrics (overall, per scenario), throughput, the config and the run directory,
    to MLflow and / or TensorBoard (docs/tracking.md)."""

    @field_validator("task_weights")
    @classmethod
    def _weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(w < 0 for w in v):
            raise ValueError("train.task_weights must be non-negative")
        return v


class Config(_Strict):
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def format_validation_error(err: ValidationError, source: str) -> str:
    """`source: unknown key `a.b`` or `source: `a.b`: message`: configs, benchmark specs."""
    where, unknown, message = first_problem(err)
    if unknown:
        return f"{source}: unknown key `{where}`"
    return f"{source}: `{where}`: {message}" if where else f"{source}: {message}"


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    if not isinstance(raw, dict):
        raise MsrecError(f"{source}: expected a mapping with data/model/train sections")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise MsrecError(format_validation_error(err, source)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set train.epochs=3`: the value is read as YAML, so numbers, lists and booleans keep their type."""
    for item in overrides:
        if "=" not in item:
            raise MsrecError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MsrecError(f"--set {key}: `{part}` is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def yaml_error(err: yaml.YAMLError) -> str:
    """PyYAML's error as one line: what is wrong and where (its own text spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


DATA_PATHS = ("train", "val", "test", "path")  # the data keys that name files or folders


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file's content (a config, a benchmark spec); errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise MsrecError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MsrecError(f"{path}: not valid YAML ({yaml_error(err)})") from None


def resolve_data_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative data paths are read relative to the file that names them (a config, a spec), so configs
    travel with their data; a path that exists as given (from the working folder) is kept."""
    out = dict(data)
    for key in DATA_PATHS:
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and not Path(value).exists() \
                and (base / value).exists():
            out[key] = str(base / value)
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    raw = apply_overrides(read_yaml(path, "config file"), overrides or [])
    if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
        raw["data"] = resolve_data_paths(raw["data"], path.parent)
    return parse_config(raw, str(path))
