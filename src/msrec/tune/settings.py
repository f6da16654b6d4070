"""The `tune:` section of a run config or a benchmark spec: how many trials, the search space over the model's
default, pruning, the sampler's seed (docs/tuning.md). Light: no Optuna, so that specs validate without it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from msrec.config import format_validation_error
from msrec.errors import MsrecError


class TuneSettings(BaseModel):
    """The `tune:` section of a config or a benchmark spec (docs/tuning.md)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    trials: int | None = Field(None, ge=1)
    """Trials in the study, the default config's included (`--trials` overrides it)."""
    space: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    """Search-space keys over the model's default space: `train.lr: {low: 1e-4, high: 1e-2, log: true}`,
    `model.mlp.hidden: {choices: [[64], [128, 64]]}`; null drops a key (docs/tuning.md)."""
    pruning: bool = True
    """Stop a trial early when its validation metric after an epoch is below the median of earlier trials'."""
    startup_trials: int | None = Field(None, ge=0)
    """Trials drawn at random before TPE models the results (null: a quarter of the trials, 2 to 10)."""
    seed: int | None = None
    """Seed of the sampler (null: train.seed); with one worker, the same study draws the same trials."""
    study: str | None = None
    """The study's name in the storage (null: the model's name, or the benchmark label)."""


def parse_settings(raw: Any, source: str) -> TuneSettings:
    try:
        return TuneSettings.model_validate(raw or {})
    except ValidationError as err:
        raise MsrecError(format_validation_error(err, f"{source}: tune")) from None
