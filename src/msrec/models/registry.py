"""Model registry: a name -> the model class, its typed options and a one-line description."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from msrec.errors import MsrecError, first_problem
from msrec.schema import FeatureSpec


class ModelOptions(BaseModel):
    """Options every model has. A model's own options class extends this one."""

    model_config = ConfigDict(extra="forbid")
    embed_dim: int = Field(16, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [256, 128])
    dropout: float = Field(0.2, ge=0, le=1)
    activation: Literal["relu", "gelu", "silu", "tanh", "prelu"] = "relu"
    batch_norm: bool = False


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
            raise MsrecError(f"model: unknown option `{where}` for model {name} "
                             f"(options: {', '.join(entry.options.model_fields)})") from None
        raise MsrecError(f"model.{where}: {message}") from None


def build_model(name: str, spec: FeatureSpec, options: dict[str, Any] | ModelOptions | None = None) -> nn.Module:
    entry = get_entry(name)
    opts = options if isinstance(options, ModelOptions) else parse_options(name, options or {})
    return entry.cls(spec, opts)


def list_models() -> list[ModelEntry]:
    """Baselines first, then the rest by name."""
    get_entry("dnn")
    first = ["dnn", "separate"]
    return [REGISTRY[k] for k in first if k in REGISTRY] + [REGISTRY[k] for k in sorted(REGISTRY) if k not in first]
