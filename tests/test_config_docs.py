"""README.md's config reference is the one the config classes give (`msrec.config_reference`): a key added to
or removed from DataConfig, TrainConfig or the options every model shares fails here until the README follows,
and so does a changed default or meaning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from msrec.config import DataConfig, EmbeddingOptimizerConfig, ModelConfig, TrainConfig
from msrec.config_reference import reference
from msrec.models.registry import ModelOptions, describe_fields
from msrec.nn.mlp import MLPOptions

README = Path(__file__).parents[1] / "README.md"


def readme_reference() -> str:
    found = re.search(r"^## Config\n.*?^```yaml\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)
    assert found, "README.md has no ```yaml block under `## Config`"
    return found.group(1)


def flat_keys(tree: dict, prefix: str = "") -> set[str]:
    """`a.b` for every leaf of a YAML mapping (an empty mapping is a leaf: a default `{}`)."""
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            keys |= flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def section_keys(cls: type[BaseModel], prefix: str) -> set[str]:
    """`prefix.key` per field; a field holding a section of its own (`train.embedding_optimizer`): its keys."""
    keys = set()
    for key, field in cls.model_fields.items():
        default = field.get_default(call_default_factory=True)
        keys |= section_keys(type(default), f"{prefix}.{key}") if isinstance(default, BaseModel) else {f"{prefix}.{key}"}
    return keys


def config_keys() -> set[str]:
    return (section_keys(DataConfig, "data") | section_keys(TrainConfig, "train")
            | {f"model.{key}" for key in ModelConfig.model_fields}
            | {f"model.{key}" for key, *_ in describe_fields(ModelOptions)})


@pytest.mark.parametrize("cls", [DataConfig, TrainConfig, EmbeddingOptimizerConfig, ModelConfig, ModelOptions,
                                 MLPOptions])
def test_every_config_field_has_a_meaning(cls: type[BaseModel]):
    missing = [key for key, field in cls.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"


def test_readme_lists_every_config_key_and_no_other():
    listed = flat_keys(yaml.safe_load(readme_reference()))
    expected = config_keys()
    assert not expected - listed, f"config keys missing from README.md's reference: {sorted(expected - listed)}"
    assert not listed - expected, f"README.md's reference lists keys that do not exist: {sorted(listed - expected)}"


def test_readme_reference_is_the_generated_one():
    assert readme_reference() == reference(), (
        "README.md's config reference differs from the config classes' docstrings and defaults: replace the "
        "```yaml block under `## Config` with the output of `python -m msrec.config_reference`")
