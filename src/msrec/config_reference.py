"""The config reference: every key of the `data`, `model` (the options all models share) and `train` sections
with its default and meaning, read from the config classes' field docstrings, so that it cannot drift from
the code. README.md's "Config" block is this text (tests/test_config_docs.py checks it);
`python -m msrec.config_reference` prints it."""

from __future__ import annotations

import textwrap
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from msrec.config import DataConfig, ModelConfig, TrainConfig
from msrec.models.registry import ModelOptions

COMMENT_AT = 32  # column of the `#` of each key's meaning
WIDTH = 116


def flow(value: Any) -> str:
    """A default in YAML flow style, as a user would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    return str(value)


def _line(indent: int, text: str, meaning: str) -> list[str]:
    """`text` then its meaning as a comment from column COMMENT_AT, wrapped onto comment-only lines."""
    head = "  " * indent + text
    if not meaning:
        return [head]
    pad = max(COMMENT_AT, len(head) + 1)
    wrapped = textwrap.wrap(meaning, WIDTH - pad - 2) or [""]
    return [f"{head.ljust(pad)}# {wrapped[0]}"] + [f"{'':{pad}}# {rest}" for rest in wrapped[1:]]


def _fields(cls: type[BaseModel], indent: int, instance: BaseModel | None = None) -> list[str]:
    lines = []
    for key, field in cls.model_fields.items():
        value = getattr(instance, key) if instance is not None else field.get_default(call_default_factory=True)
        meaning = " ".join((field.description or "").split())
        if get_origin(field.annotation) is Literal:
            meaning = f"[{' | '.join(map(str, get_args(field.annotation)))}] {meaning}"
        if isinstance(value, BaseModel):
            lines += _line(indent, f"{key}:", meaning) + _fields(type(value), indent + 1, value)
        else:
            lines += _line(indent, f"{key}: {flow(value)}", meaning)
    return lines


def reference() -> str:
    """Every config key with its default and meaning, as YAML."""
    lines = ["data:", *_fields(DataConfig, 1), "model:", *_fields(ModelConfig, 1), *_fields(ModelOptions, 1),
             "  # ...and the chosen model's own options: `msrec models NAME`", "train:", *_fields(TrainConfig, 1)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
