"""Built-in datasets: a name -> a loader with typed options, registered by the loader's own file.

A loader takes `data.path` and its validated options and returns (tables, schema defaults): the tables are
{"all": table} (split later, seeded) or {"train": ..., "test": ...} (and "val") when the dataset ships its
own split; the defaults are schema keys (sparse, dense, lists, scenario, labels, user, truth) that `data`
keys override. Options are checked as model options are: an unknown one is an error listing the allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from msrec.errors import MsrecError, first_problem

Tables = dict[str, pa.Table]
Loaded = tuple[Tables, dict[str, Any]]


class DatasetOptions(BaseModel):
    """No options; a dataset's own options class extends this one (each field documented by its docstring)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    options: type[DatasetOptions]
    summary: str
    load: Callable[[str | None, Any], Loaded]

    @property
    def description(self) -> str:
        """The summary and the option names, from the options class (so the list cannot drift)."""
        keys = list(self.options.model_fields)
        return f"{self.summary}; options: {', '.join(keys)}" if keys else self.summary


DATASETS: dict[str, DatasetEntry] = {}


def register(name: str, summary: str, options: type[DatasetOptions] = DatasetOptions) -> Callable:
    def wrap(load: Callable[[str | None, Any], Loaded]) -> Callable[[str | None, Any], Loaded]:
        DATASETS[name] = DatasetEntry(name, options, summary, load)
        return load

    return wrap


def parse_options(name: str, options: dict[str, Any]) -> DatasetOptions:
    entry = _entry(name)
    try:
        return entry.options(**options)
    except ValidationError as err:
        where, unknown, message = first_problem(err)
        if unknown:
            allowed = ", ".join(entry.options.model_fields) or "none"
            raise MsrecError(f"data.options: unknown option `{where}` for dataset {name} (options: {allowed})") \
                from None
        raise MsrecError(f"data.options.{where}: {message}" if where else f"data.options: {message}") from None


def load_builtin(name: str, path: str | None, options: dict[str, Any]) -> Loaded:
    opts = parse_options(name, options)
    return DATASETS[name].load(path, opts)


def list_datasets() -> list[DatasetEntry]:
    return list(DATASETS.values())


def _entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise MsrecError(f"data.dataset: unknown dataset `{name}` (known: {', '.join(DATASETS)})")
    return DATASETS[name]


# Each file registers its loaders when imported (after `register` exists), in the order `msrec datasets` lists.
# isort: off
from msrec.data.datasets import synthetic, movielens, aliccp, aliexpress, kuairand, douban, mind  # noqa: F401
# isort: on
