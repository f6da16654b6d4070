"""What the public loaders share: the `scenarios` option, finding the file in `data.path`, checking the layout's
columns, and turning blank categorical values into a category of their own."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import field_validator

from msrec.data.checks import is_text, missing
from msrec.data.datasets import DatasetOptions
from msrec.errors import MsrecError


class ScenarioOptions(DatasetOptions):
    scenarios: list[str | int] | None = None
    """Keep only the rows of these scenario values (compared as text), e.g. the largest tabs or some countries."""

    @field_validator("scenarios")
    @classmethod
    def _as_text(cls, wanted: list[str | int] | None) -> list[str | int] | None:
        if wanted is None:
            return None
        if not wanted:
            raise ValueError(f"a non-empty list of scenario values, got {wanted!r}")
        return list(dict.fromkeys(str(v) for v in wanted))  # a value named twice is still loaded once


def keep_scenarios(table: pa.Table, column: str, wanted: list | None, source: Path) -> pa.Table:
    if wanted is None:
        return table
    values = pc.cast(table[column], pa.string())
    kept = table.filter(pc.is_in(values, value_set=pa.array(wanted)))
    if kept.num_rows == 0:
        present = sorted(pc.unique(values).to_pylist())
        raise MsrecError(f"data.options.scenarios: none of {wanted} in column `{column}` of {source} "
                         f"(values: {present})")
    return kept


def find_file(name: str, path: str | None, pattern: str) -> Path:
    """`data.path` as a file, or the one file matching `pattern` in the folder it names."""
    if not path:
        raise MsrecError(f"{name}: set data.path to the {pattern} file or the folder holding it")
    p = Path(path)
    if not p.exists():
        raise MsrecError(f"{name}: data.path {p} does not exist (expected the {pattern} file or its folder)")
    if p.is_file():
        return p
    found = sorted(f for f in p.glob(pattern) if f.is_file())
    if not found:
        raise MsrecError(f"{name}: no {pattern} file in {p}")
    if len(found) > 1:
        raise MsrecError(f"{name}: several {pattern} files in {p} ({', '.join(f.name for f in found)}); "
                         "give data.path the one to use")
    return found[0]


def require(table: pa.Table, columns: list[str], source: Path, name: str) -> None:
    absent = [c for c in columns if c not in table.column_names]
    if absent:
        raise MsrecError(f"{source}: missing column `{absent[0]}`, which the {name} layout has "
                         f"(columns: {', '.join(table.column_names)})")


def fill_missing_ids(table: pa.Table, columns: list[str], text: str = "unknown", number: int = -1) -> pa.Table:
    """A missing categorical value (null, NaN, an empty cell) becomes a value of its own: for these
    datasets "not known" is a category, not an error. Integral float columns (ids written as 3.0 by
    pandas after a join) become integers."""
    for name in columns:
        col = table[name]
        if pa.types.is_floating(col.type):
            col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
            filled = pc.fill_null(col, float(number))
            col = pc.cast(filled, pa.int64()) if pc.all(pc.equal(pc.floor(filled), filled)).as_py() else filled
        elif pa.types.is_integer(col.type):
            col = pc.fill_null(col, number)
        elif is_text(col):
            col = pc.if_else(missing(col), pa.scalar(text, col.type), col)
        table = table.set_column(table.column_names.index(name), name, col)
    return table
