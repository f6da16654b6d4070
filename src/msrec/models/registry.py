"""Model registry: a name -> the model class, its typed options and a one-line description.

Options: every MLP part of a model (the main network `mlp`, a tower, a gate...) is an `MLPOptions` field, so
each part takes the same four keys (`hidden`, `dropout`, `activation`, `batch_norm`) and `--set
model.tower.hidden=[32]` reaches it. `describe_options` lists them with their defaults and meanings (from
the fields' docstrings), which is what `msrec models NAME` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args, get_origin

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from msrec.errors import MsrecError, first_problem
from msrec.nn.backbone import BackboneOptions
from msrec.nn.embedding import tables_stored_in
from msrec.nn.mlp import MLPOptions
from msrec.schema import FeatureSpec

Legacy = dict[str, tuple[str, ...]]


def part(hidden: list[int], dropout: float = 0.0) -> Any:
    """An `MLPOptions` field with the part's own defaults; keys a config leaves out keep these (not
    MLPOptions' class defaults), so `tower: {hidden: [32]}` keeps the tower's dropout."""
    return Field(default_factory=lambda: MLPOptions(hidden=list(hidden), dropout=dropout))


def with_layers(options: MLPOptions) -> MLPOptions:
    """For parts whose last hidden width is their output size (experts)."""
    if not options.hidden:
        raise ValueError("`hidden` needs at least one width (the last one is the part's output size)")
    return options


def without_batch_norm(why: str) -> AfterValidator:
    """Refuses `batch_norm: true` on a part that cannot honour it, rather than ignoring it."""
    def check(options: MLPOptions) -> MLPOptions:
        if options.batch_norm:
            raise ValueError(f"`batch_norm` is not supported here: {why}")
        return options

    return AfterValidator(check)


def from_legacy(options: dict[str, Any], legacy: Legacy) -> dict[str, Any]:
    """The nested form of options written in 0.1's flat spelling (`tower_hidden: [64]` ->
    `tower: {hidden: [64]}`); `legacy` maps each 0.1 key to its new key(s) (none: 0.1 ignored it)."""
    out = dict(options)
    for old, targets in legacy.items():
        if old not in out:
            continue
        value = out.pop(old)
        for target in targets:
            section, _, key = target.rpartition(".")
            node = out
            if section:
                if not isinstance(out.get(section, {}), dict):
                    raise ValueError(f"`{old}` is the 0.1 spelling of `{target}`: give one of them")
                node = out[section] = dict(out.get(section, {}))
            if key in node:
                raise ValueError(f"`{old}` is the 0.1 spelling of `{target}`: give one of them")
            node[key] = [value] if key == "hidden" and isinstance(value, int) else value  # 0.1 gates: one width
    return out


class ModelOptions(BaseModel):
    """Options every model has. A model's own options class extends this one, and says in `legacy` how its
    0.1 flat keys map to the nested ones (0.1 configs and run directories still build the same network)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    legacy: ClassVar[Legacy] = {"hidden": ("mlp.hidden",), "dropout": ("mlp.dropout",),
                                "activation": ("mlp.activation",), "batch_norm": ("mlp.batch_norm",)}
    # What `msrec tune` searches by default (docs/tuning.md): config keys as `--set` spells them -> a range
    # `{low, high, log}` (ints when both ends are ints) or `{choices}`. A model adds its own key options
    # (`search_space = ModelOptions.search_space | {...}`); a tune config's `tune.space` overrides it.
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "train.lr": {"low": 3e-4, "high": 1e-2, "log": True},
        "model.embed_dim": {"choices": [8, 16, 32]},
        "model.mlp.hidden": {"choices": [[128, 64], [256, 128], [512, 256]]},
        "model.mlp.dropout": {"low": 0.0, "high": 0.5},
    }
    embed_dim: int = Field(16, ge=1)
    """Size of every feature embedding."""
    mlp: MLPOptions = part([256, 128], dropout=0.2)
    """The main network."""
    backbone: BackboneOptions = Field(default_factory=BackboneOptions)
    """The interaction backbone under the model's network (docs/backbones.md)."""
    table_dtype: Literal["float32", "bfloat16"] = "float32"
    """How the embedding table is stored: `bfloat16` halves its memory (training and run directory; lookups and
    everything above stay float32, updates are rounded stochastically); needs `train.embedding_optimizer`
    `rowwise_adagrad` (docs/embeddings.md)."""

    @model_validator(mode="before")
    @classmethod
    def _nested(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = from_legacy(data, cls.legacy)
        for name, field in cls.model_fields.items():
            if field.annotation is MLPOptions and isinstance(data.get(name), dict):
                data[name] = {**field.get_default(call_default_factory=True).model_dump(), **data[name]}
        return data


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type[nn.Module]
    options: type[ModelOptions]
    description: str


REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, options: type[ModelOptions], description: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        REGISTRY[name] = ModelEntry(name, cls, options, description)
        cls.registry_name = name
        return cls

    return wrap


def get_entry(name: str) -> ModelEntry:
    import msrec.models  # noqa: F401  (importing the package registers every model)

    if name not in REGISTRY:
        raise MsrecError(f"model.name: unknown model `{name}` (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def parse_options(name: str, options: dict[str, Any]) -> ModelOptions:
    entry = get_entry(name)
    try:
        return entry.options(**options)
    except ValidationError as err:
        where, unknown, message = first_problem(err)
        if unknown:
            keys = ", ".join(key for key, *_ in describe_fields(entry.options))
            raise MsrecError(f"model: unknown option `{where}` for model {name} (options: {keys})") from None
        for old, targets in entry.options.legacy.items():  # name the key as the user spelt it
            hit = next((t for t in targets if where == t or where.startswith(t + ".")), None)
            if old in options and hit:
                where = old + where[len(hit):]
        raise MsrecError(f"model.{where}: {message}" if where else f"model: {message}") from None


def build_model(name: str, spec: FeatureSpec, options: dict[str, Any] | ModelOptions | None = None) -> nn.Module:
    entry = get_entry(name)
    opts = options if isinstance(options, ModelOptions) else parse_options(name, options or {})
    with tables_stored_in(getattr(torch, opts.table_dtype)):
        return entry.cls(spec, opts)


def list_models() -> list[ModelEntry]:
    """Baselines first, then the rest by name."""
    get_entry("dnn")
    first = ["dnn", "separate"]
    return [REGISTRY[k] for k in first if k in REGISTRY] + [REGISTRY[k] for k in sorted(REGISTRY) if k not in first]


def type_name(annotation: Any) -> str:
    """`list[int]`, `int | None`, `relu | gelu`: a field's type as a user reads it."""
    if get_origin(annotation) is Literal:
        return " | ".join(str(arg) for arg in get_args(annotation))
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def describe_fields(cls: type[BaseModel]) -> list[tuple[str, str, Any, str]]:
    """(key, type, default, meaning) of every field of an options or config class; an `MLPOptions` part (and
    the backbone) is flattened into `part.hidden`, `part.dropout`, ... with the part's own defaults."""
    rows = []
    for key, field in cls.model_fields.items():
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        meaning = " ".join((field.description or "").split())
        if isinstance(default, MLPOptions | BackboneOptions):
            for sub, sub_type, _, sub_meaning in describe_fields(type(default)):
                rows.append((f"{key}.{sub}", sub_type, getattr(default, sub),
                             f"{meaning.rstrip('.')}: {sub_meaning[:1].lower()}{sub_meaning[1:]}"))
        else:
            rows.append((key, type_name(field.annotation), default, meaning))
    return rows


def describe_options(name: str) -> list[tuple[str, str, Any, str]]:
    """(key, type, default, one-line meaning) of each option of model `name`, parts flattened (`tower.hidden`):
    what `msrec models NAME` prints, read from the option classes so that it cannot drift from the code."""
    return describe_fields(get_entry(name).options)
