"""The scenario of each row: one column (`data.scenario: x`) or the combination of several (`[country,
placement]`, a hierarchy whose first column is the top level).

Flat: scenario id i is `values[i]`, as msrec always did. Hierarchical: every level has its own vocabulary
(level ids 1-based, 0 = none), and every combination seen in training with at least `data.min_scenario_rows`
training rows gets a scenario id; the rarer ones (and, when encoding, combinations never seen in training)
fall back to their parent level, the first-level value alone (`US/*`), which gets an id of its own where some
combination fell back to it. A combination with no id and no parent id is an error naming its columns.
`encoder.json` keeps a flat scenario exactly as before (`{"kind", "values", "names"}`) and a hierarchy as

    {"levels": [{"column": "country", "kind": "str", "values": ["DE", "US"]}, ...],   # level id of values[i] = i + 1
     "combinations": [[1, 0], [1, 2], [2, 1], ...],   # scenario id -> level ids (0: fell back to the parent)
     "min_rows": 500, "names": ["DE/*", "DE/top", "US/feed", ...]}

All of it is whole-column work: the per-row part is a vocabulary lookup per level and one `searchsorted`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from msrec.data.checks import ColumnError, Kind, as_kind, as_written, check_no_missing, column
from msrec.data.vocab import ValueCounts, lookup
from msrec.errors import MsrecError
from msrec.schema import ScenarioLevels, Schema

SEP, ANY = "/", "*"  # a combination's name: its level values joined by SEP, ANY for a level it fell back from


def _value_set(values: list, kind: Kind) -> pa.Array:
    return pa.array(values, type=pa.int64() if kind == "int" else pa.string())


def _unknown(source: str, name: str, col: pa.ChunkedArray, row: int, known: list[str]) -> ColumnError:
    shown = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
    return ColumnError(source, name, row, f"unknown scenario {as_written(col, row)} (known: {shown})")


def _level_ids(table: pa.Table, name: str, kind: Kind, value_set: pa.Array, names: list[str],
               source: str) -> np.ndarray:
    """1-based id of each row's value in one scenario column; a missing or unseen value is an error."""
    col = column(table, name, source)
    check_no_missing(col, name, source, "scenario")
    try:
        ids = lookup(as_kind(col, kind, name, source), value_set)
        row = int(np.argmax(ids == 0)) if (ids == 0).any() else None
    except ColumnError as err:
        ids, row = np.empty(0, np.int64), err.row
    if row is not None:
        raise _unknown(source, name, col, row, names)
    return ids


@dataclass
class ScenarioColumn:
    """A flat scenario: id i is `values[i]`, shown as `names[i]`."""

    kind: Kind
    values: list
    names: list[str]

    def __post_init__(self) -> None:
        if self.kind not in get_args(Kind) or not isinstance(self.values, list):
            raise ValueError(f"scenario kind {self.kind!r} / values of type {type(self.values).__name__}")

    @cached_property
    def value_set(self) -> pa.Array:
        return _value_set(self.values, self.kind)

    def ids(self, table: pa.Table, column_name: str, source: str) -> np.ndarray:
        return _level_ids(table, column_name, self.kind, self.value_set, self.names, source) - 1

    def levels(self) -> ScenarioLevels | None:
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": self.values, "names": self.names}


@dataclass
class ScenarioLevel:
    """One column of a hierarchical scenario: level id i + 1 is `values[i]`."""

    column: str
    kind: Kind
    values: list

    def __post_init__(self) -> None:
        if self.kind not in get_args(Kind) or not isinstance(self.values, list):
            raise ValueError(f"scenario level kind {self.kind!r} / values of type {type(self.values).__name__}")

    @cached_property
    def value_set(self) -> pa.Array:
        return _value_set(self.values, self.kind)

    @property
    def names(self) -> list[str]:
        return [str(v) for v in self.values]


@dataclass
class ScenarioHierarchy:
    """Several scenario columns: scenario id s is the combination of level ids `combinations[s]`."""

    levels_: list[ScenarioLevel]
    combinations: list[list[int]]
    min_rows: int = 0

    def __post_init__(self) -> None:
        width = len(self.levels_)
        if width < 2 or any(len(c) != width or c[0] < 1 for c in self.combinations) or not self.combinations:
            raise ValueError("scenario combinations must hold one level id per column, the first level set")
        for j, level in enumerate(self.levels_):
            if any(not 0 <= c[j] <= len(level.values) for c in self.combinations):
                raise ValueError(f"a combination's id for `{level.column}` is outside its {len(level.values)} values")

    @cached_property
    def names(self) -> list[str]:
        names = [SEP.join(self.levels_[j].names[i - 1] if i else ANY for j, i in enumerate(c))
                 for c in self.combinations]
        if len(set(names)) < len(names):
            raise MsrecError(f"data.scenario: the combinations of {', '.join(self.columns)} do not have distinct "
                             f"names when joined by {SEP!r} (a value holds {SEP!r}?)")
        return names

    @property
    def columns(self) -> list[str]:
        return [level.column for level in self.levels_]

    @cached_property
    def _radix(self) -> np.ndarray:
        sizes = np.array([len(level.values) + 1 for level in self.levels_], dtype=np.int64)
        return np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]])

    @cached_property
    def _keys(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.asarray(self.combinations, dtype=np.int64) @ self._radix
        order = np.argsort(keys)
        return keys[order], order

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """Scenario id of each combination key; -1 where there is none."""
        known, ids = self._keys
        pos = np.minimum(np.searchsorted(known, keys), len(known) - 1)
        return np.where(known[pos] == keys, ids[pos], -1)

    def ids(self, table: pa.Table, column_name: Any, source: str) -> np.ndarray:
        level_ids = np.stack([_level_ids(table, level.column, level.kind, level.value_set, level.names, source)
                              for level in self.levels_], 1) if table.num_rows else np.zeros((0, len(self.levels_)),
                                                                                           np.int64)
        scenario = self._find(level_ids @ self._radix)
        fallback = scenario < 0
        if fallback.any():  # a rare or unseen combination: its parent level's id
            scenario[fallback] = self._find(level_ids[fallback, 0] * self._radix[0])
        if (scenario < 0).any():
            row = int(np.argmax(scenario < 0))
            shown = ", ".join(f"{c}={as_written(table[c], row)}" for c in self.columns)
            top = self.levels_[0]
            raise ColumnError(source, self.columns[-1], row, f"unknown scenario combination {shown}: not in the "
                              f"training data with data.min_scenario_rows={self.min_rows} rows, and "
                              f"{top.column}={as_written(table[top.column], row)} has no fallback id of its own "
                              "(no rarer combination fell back to it)")
        return scenario

    def levels(self) -> ScenarioLevels:
        return ScenarioLevels(self.columns, [level.names for level in self.levels_],
                              [list(c) for c in self.combinations])

    def to_dict(self) -> dict[str, Any]:
        return {"levels": [{"column": lv.column, "kind": lv.kind, "values": lv.values} for lv in self.levels_],
                "combinations": self.combinations, "min_rows": self.min_rows, "names": self.names}


Scenario = ScenarioColumn | ScenarioHierarchy


def scenario_from_dict(d: dict[str, Any], schema: Schema) -> Scenario:
    """A flat or hierarchical scenario from `encoder.json`, checked against the schema's scenario columns."""
    if "levels" not in d:
        if len(schema.scenario_columns) != 1:
            raise ValueError(f"schema names scenario columns {schema.scenario_columns}, the scenario has one")
        return ScenarioColumn(d["kind"], d["values"], d["names"])
    levels = [ScenarioLevel(lv["column"], lv["kind"], lv["values"]) for lv in d["levels"]]
    hierarchy = ScenarioHierarchy(levels, [list(c) for c in d["combinations"]], int(d.get("min_rows", 0)))
    if hierarchy.columns != schema.scenario_columns:
        raise ValueError(f"scenario levels {hierarchy.columns}, schema {schema.scenario_columns}")
    return hierarchy


class ScenarioCounter:
    """Counts scenario values (and combinations) chunk by chunk during the encoder's fit."""

    def __init__(self, schema: Schema, min_rows: int = 0):
        self.columns = schema.scenario_columns
        if min_rows and len(self.columns) == 1:
            raise MsrecError("data.min_scenario_rows needs several data.scenario columns (a hierarchy): a single "
                             f"column `{self.columns[0]}` has no parent level to fall back to")
        self.min_rows = min_rows
        self.counts = [ValueCounts() for _ in self.columns]
        self.kinds: list[Kind | None] = [None] * len(self.columns)
        self.combinations: Counter = Counter()  # tuple of level values as text -> training rows

    def add(self, table: pa.Table, source: str, offset: int) -> None:
        texts = []
        for j, name in enumerate(self.columns):
            col = column(table, name, source)
            check_no_missing(col, name, source, "scenario", offset)
            self.kinds[j] = self.counts[j].merge_kind(self.kinds[j], col)
            values = as_kind(col, self.kinds[j], name, source, offset)
            self.counts[j].add(values)
            texts.append(pc.cast(values, pa.string()))
        if len(self.columns) > 1 and table.num_rows:
            grouped = pa.table({str(j): t for j, t in enumerate(texts)}).group_by(
                [str(j) for j in range(len(texts))]).aggregate([([], "count_all")])
            keys = zip(*[grouped[str(j)].to_pylist() for j in range(len(texts))])
            self.combinations.update(dict(zip(keys, grouped["count_all"].to_pylist())))

    def result(self) -> Scenario:
        values = [c.vocabulary(1) for c in self.counts]
        kinds: list[Kind] = [k or "str" for k in self.kinds]
        if len(self.columns) == 1:
            return ScenarioColumn(kinds[0], values[0], [str(v) for v in values[0]])
        level_of = [{str(v): i + 1 for i, v in enumerate(vs)} for vs in values]
        combinations = set()
        for key, rows in self.combinations.items():
            ids = tuple(level_of[j][v] for j, v in enumerate(key))
            combinations.add(ids if rows >= self.min_rows else (ids[0],) + (0,) * (len(ids) - 1))
        levels = [ScenarioLevel(c, k, v) for c, k, v in zip(self.columns, kinds, values)]
        return ScenarioHierarchy(levels, [list(c) for c in sorted(combinations)], self.min_rows)


def unseen(values: pa.ChunkedArray | pa.Array, value_set: pa.Array, keep_null: bool = False) -> list:
    """The distinct values not in `value_set`, sorted (null last, and only with `keep_null`)."""
    distinct = pc.unique(values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values)
    new = distinct.filter(pa.array(lookup(distinct, value_set) == 0))
    new = new.filter(pc.invert(pc.is_null(new))) if not keep_null else new
    return pc.take(new, pc.sort_indices(new)).to_pylist()


def grown(scenario: Scenario, table: pa.Table, schema: Schema, source: str) -> Scenario:
    """`scenario` that also knows the values (combinations) of `table` unseen in training, their ids appended
    so that every old id stays (msrec extend). A new combination rarer than `min_rows` falls back to its
    parent level, which gets an id of its own where it has none."""
    def values(name: str, kind: Kind) -> pa.ChunkedArray:
        col = column(table, name, source)
        check_no_missing(col, name, source, "scenario")
        return as_kind(col, kind, name, source)

    if isinstance(scenario, ScenarioColumn):
        new = unseen(values(schema.scenario, scenario.kind), scenario.value_set)
        return ScenarioColumn(scenario.kind, scenario.values + new, scenario.names + [str(v) for v in new])
    levels = [ScenarioLevel(lv.column, lv.kind, lv.values + unseen(values(lv.column, lv.kind), lv.value_set))
              for lv in scenario.levels_]
    out = ScenarioHierarchy(levels, [list(c) for c in scenario.combinations], scenario.min_rows)
    level_ids = np.stack([lookup(values(lv.column, lv.kind), lv.value_set) for lv in levels], 1)
    keys, rows = np.unique(level_ids @ out._radix, return_counts=True)
    combos = keys[:, None] // out._radix % np.array([len(lv.values) + 1 for lv in levels])
    combos[rows < scenario.min_rows, 1:] = 0  # too rare: the parent level
    known = {tuple(c) for c in out.combinations}
    new = sorted({tuple(int(i) for i in c) for c in combos} - known)
    return ScenarioHierarchy(levels, out.combinations + [list(c) for c in new], scenario.min_rows)
