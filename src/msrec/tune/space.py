"""The search space of a tuning study: config keys (dotted, as `--set` spells them) -> a range or a set of choices.

    train.lr:          {low: 0.0003, high: 0.01, log: true}   # a float range (log scale)
    model.experts:     {low: 2, high: 8}                      # an int range (both ends ints), `step` optional
    model.mlp.hidden:  {choices: [[128, 64], [256, 128]]}     # any YAML values

The default is the model's `search_space` (beside its options class, `msrec.models.registry.ModelOptions`);
a config's `tune.space` adds or replaces keys, and a key set to null leaves it out. Every parameter is widened
to hold the base config's own value, so that the base config itself is a point of the space: trial 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from msrec.config import Config, apply_overrides
from msrec.errors import MsrecError
from msrec.models.registry import from_legacy, get_entry, parse_options

PRIMITIVE = (str, int, float, bool, type(None))  # what Optuna stores as a categorical choice
REFUSED = ("data.", "train.seed", "train.epochs", "train.tracking", "train.checkpoint")  # not searchable


@dataclass
class Param:
    key: str  # a dotted config key
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and isinstance(self.low, int) and isinstance(self.high, int)

    def labels(self) -> list:
        """Optuna's choices: YAML values that are not plain scalars (lists, mappings) as their flow text."""
        return [c if isinstance(c, PRIMITIVE) else encode(c) for c in self.choices or []]

    def value(self, drawn: Any) -> Any:
        """The config value of what Optuna drew (a list choice back from its text)."""
        if self.choices is not None and isinstance(drawn, str) and drawn not in self.choices:
            return yaml.safe_load(drawn)
        return drawn

    def label(self, value: Any) -> Any:
        return value if isinstance(value, PRIMITIVE) else encode(value)

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {encode(self.choices)}"
        return f"{self.low} to {self.high}" + (" (log)" if self.log else "") + (f" step {self.step}" if self.step else "")


def encode(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _param(key: str, raw: Any, where: str) -> Param:
    if not isinstance(raw, dict) or not (set(raw) <= {"low", "high", "log", "step", "choices"}):
        raise MsrecError(f"{where}: `{key}`: expected {{low, high[, log, step]}} or {{choices: [...]}}, got {raw!r}")
    if key.startswith(REFUSED) or not key.startswith(("model.", "train.")):
        raise MsrecError(f"{where}: `{key}` cannot be searched (only model.* and train.* keys, not "
                         f"{', '.join(REFUSED)})")
    if "choices" in raw:
        if set(raw) != {"choices"} or not isinstance(raw["choices"], list) or not raw["choices"]:
            raise MsrecError(f"{where}: `{key}`: `choices` must be a non-empty list, alone")
        return Param(key, choices=list(raw["choices"]))
    low, high = raw.get("low"), raw.get("high")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (low, high)) or low > high:
        raise MsrecError(f"{where}: `{key}`: needs numbers low <= high, got low={low!r}, high={high!r}")
    param = Param(key, low, high, bool(raw.get("log", False)), raw.get("step"))
    if param.log and (low <= 0 or param.step):
        raise MsrecError(f"{where}: `{key}`: a log range needs low > 0 and no step")
    return param


def get_path(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def full_config(cfg: Config) -> dict:
    """The config with every model option spelt out (its defaults included): where a parameter's base value is
    read from."""
    raw = cfg.to_dict()
    options = parse_options(cfg.model.name, cfg.model.options()).model_dump(mode="json")
    raw["model"] = {"name": cfg.model.name, **options}
    return raw


def base_config(cfg: Config) -> dict:
    """The config as written, its model options in the nested spelling (0.1's flat keys converted), which the
    drawn values are set on: a tuned config names only what its base set and what was searched."""
    raw = cfg.model_dump(mode="json", exclude_defaults=True)
    raw["model"] = {"name": cfg.model.name, **from_legacy(cfg.model.options(), get_entry(cfg.model.name).options.legacy)}
    return raw


def resolve_space(cfg: Config, overrides: dict[str, Any] | None = None, where: str = "tune.space") -> list[Param]:
    """The model's default space with `overrides` applied, each parameter widened to hold the base value."""
    raw = dict(get_entry(cfg.model.name).options.search_space)
    for key, value in (overrides or {}).items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    if not raw:
        raise MsrecError(f"{where}: the search space is empty")
    base = full_config(cfg)
    params = []
    for key, spec in raw.items():
        param = _param(key, spec, where)
        try:
            value = get_path(base, key)
        except KeyError:
            raise MsrecError(f"{where}: `{key}` is not a key of model {cfg.model.name}'s config") from None
        if param.choices is not None:
            if value not in param.choices:
                param.choices.append(value)
        elif isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value):
            param.low, param.high = min(param.low, value), max(param.high, value)  # a float value: a float range
        params.append(param)
    return params


def base_point(cfg: Config, params: list[Param]) -> dict[str, Any]:
    """Optuna's parameters of the base config itself (trial 0)."""
    base = full_config(cfg)
    return {p.key: p.label(get_path(base, p.key)) for p in params}


def suggest(trial: Any, params: list[Param]) -> dict[str, Any]:
    """One point of the space drawn by Optuna's trial, as config values."""
    out = {}
    for p in params:
        if p.choices is not None:
            out[p.key] = p.value(trial.suggest_categorical(p.key, p.labels()))
        elif p.is_int:
            out[p.key] = trial.suggest_int(p.key, p.low, p.high, step=int(p.step or 1), log=p.log)
        else:
            out[p.key] = trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)
    return out


def params_of(values: dict[str, Any], params: list[Param]) -> dict[str, Any]:
    """A finished trial's Optuna parameters back as config values."""
    by_key = {p.key: p for p in params}
    return {k: by_key[k].value(v) if k in by_key else v for k, v in values.items()}


def apply(raw: dict, values: dict[str, Any]) -> dict:
    """The config (a dict) with the drawn values set, as `--set` would set them."""
    return apply_overrides(yaml.safe_load(yaml.safe_dump(raw)), [f"{k}={encode(v)}" for k, v in values.items()])
