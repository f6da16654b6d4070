"""Column checks: what a raw column must hold before it is encoded, and errors that name file, column and row.

Rows are counted from 1 over the data rows (a CSV's header is not a row), plus the offset of the chunk they
came in, so a message points at the line a user can find. Everything is whole-column pyarrow / numpy work;
Python walks rows only on an error path, to name the first bad one.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from msrec.errors import MsrecError
from msrec.schema import Schema

Kind = Literal["int", "str"]
MissingIds = Literal["error", "unknown", "category"]
MISSING_TEXT = pa.array(["", "nan", "null"])  # lower-cased; "NA" and "none" stay values (MovieLens's occupation "none")
_CANONICAL_INT = r"^(0|-?[1-9][0-9]{0,18})$"  # text that reads back exactly as written once cast to int64


class ColumnError(MsrecError):
    """A bad value: the message counts rows from 1; `row` is the 0-based row of the table checked (None when
    the whole column is at fault) and `problem` the message without its place, so a service can point at
    the record instead."""

    def __init__(self, source: str, column: str, row: int | None, problem: str, row_offset: int = 0):
        where = f" row {row_offset + row + 1}:" if row is not None else ""
        super().__init__(f"{source}: column `{column}`{where} {problem}")
        self.column, self.row, self.problem = column, row, problem


def is_text(col: pa.ChunkedArray | pa.Array) -> bool:
    return pa.types.is_string(col.type) or pa.types.is_large_string(col.type)


def column(table: pa.Table, name: str, source: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise MsrecError(f"{source}: missing column `{name}` (columns: {', '.join(table.column_names)})")
    return table[name]


def first_row(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def as_written(col: pa.ChunkedArray | pa.Array, row: int) -> str:
    """A cell as the user wrote it, quoted ('2010-10-06', not datetime.date(2010, 10, 6))."""
    try:
        return repr(pc.cast(col.slice(row, 1), pa.string())[0].as_py())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return repr(str(col[row].as_py()))


# ------------------------------------------------------------------------------------------ missing values


def written_out_missing(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """In a text column, where a cell spells a missing value ("", "nan", "null", any case or spacing); None
    when no cell does (or the column is not text). Only the distinct values are normalised: one hash pass
    instead of two string copies of the column."""
    if not is_text(col):
        return None
    distinct = pc.unique(col)
    spelled = pc.filter(distinct, pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(distinct)), value_set=MISSING_TEXT))
    return pc.is_in(col, value_set=spelled) if len(spelled) else None


def missing(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Null, NaN and, in text (ids are read from CSV as text), an empty cell or a written-out NaN/null."""
    mask = pc.is_null(col, nan_is_null=True) if pa.types.is_floating(col.type) else pc.is_null(col)
    written_out = written_out_missing(col)
    return mask if written_out is None else pc.or_kleene(mask, written_out)


def check_no_missing(col: pa.ChunkedArray, name: str, source: str, what: str, row_offset: int = 0) -> None:
    mask = missing(col)
    if pc.any(mask).as_py():
        raise ColumnError(source, name, first_row(mask), f"missing {what}", row_offset)


def missing_as_null(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Every spelling of a missing value as one null: the single value a blank id is counted and looked up as."""
    mask = missing(col)
    return pc.if_else(mask, pa.scalar(None, col.type), col) if pc.any(mask).as_py() else col


def ids(col: pa.ChunkedArray, name: str, source: str, missing_ids: MissingIds, row_offset: int = 0) -> pa.ChunkedArray:
    """An id column under `data.missing_ids`: a missing id is an error, or null (then unknown or a category)."""
    if missing_ids == "error":
        check_no_missing(col, name, source, "id", row_offset)
        return col
    return missing_as_null(col)


# ------------------------------------------------------------------------------------------ id kinds and casts


def id_kind(col: pa.ChunkedArray) -> Kind:
    """Ids are compared as int64 when they are integers: integer columns, integral floats, and text whose
    values are all canonical integers (CSV ids are read as text; "7" is 7, but "007", "+7" or " 7" keep the
    column text, so no id changes its spelling). Missing values (null) do not count."""
    if pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        return "int"
    if pa.types.is_floating(col.type):
        filled = pc.fill_null(pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col), 0.0)
        return "int" if pc.all(pc.equal(pc.floor(filled), filled)).as_py() else "str"
    if is_text(col):
        distinct = pc.unique(col).drop_null()
        if len(distinct) and pc.all(pc.match_substring_regex(distinct, _CANONICAL_INT)).as_py():
            try:
                pc.cast(distinct, pa.int64())  # 19 digits may still lie beyond int64
                return "int"
            except pa.ArrowInvalid:
                pass
    return "str"


def as_kind(col: pa.ChunkedArray, kind: Kind, name: str, source: str, row_offset: int = 0) -> pa.ChunkedArray:
    target = pa.int64() if kind == "int" else pa.string()
    if col.type == target:
        return col
    try:
        return pc.cast(col, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if kind == "int":  # text ids that are not numbers, where training ids were: none can match
            bad = _first_bad_cast(col, target)
            problem = f"{as_written(col, bad)} is not an integer id" if bad is not None else \
                f"({col.type}) is not an integer id"
            raise ColumnError(source, name, bad, f"{problem} (the training data had integer ids)",
                              row_offset) from None
        raise ColumnError(source, name, None, f"has type {col.type}; an id column holds one integer or text "
                          "value per row (declare lists under data.lists)") from None


def _first_bad_cast(col: pa.ChunkedArray, target: pa.DataType) -> int | None:
    """The first row Arrow itself cannot cast (error path only): bisection on prefixes, casts in C."""
    def casts(rows: int) -> bool:
        try:
            pc.cast(col.slice(0, rows), target)
            return True
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False

    if casts(len(col)):
        return None
    good, bad = 0, len(col)  # the first `good` rows cast; the first `bad` rows do not
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if casts(mid) else (good, mid)
    return bad - 1


# ------------------------------------------------------------------------------------------ numbers and labels


def numeric(col: pa.ChunkedArray, name: str, source: str, row_offset: int = 0,
            expected: str = "a number") -> np.ndarray:
    """A column as float64 (missing: NaN); a cell that is no number is named as written."""
    try:
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for i, v in enumerate(col.to_pylist()):  # error path only: find the first value that is not a number
        try:
            if v is not None:
                float(v)
        except (TypeError, ValueError):
            raise ColumnError(source, name, i, f"{as_written(col, i)} is not {expected}", row_offset) from None
    raise ColumnError(source, name, None, f"has type {col.type}, expected {expected}") from None


def dense_values(col: pa.ChunkedArray, name: str, source: str, row_offset: int = 0) -> np.ndarray:
    """A dense column as float64; missing is NaN (imputed later), an infinity is an error: it would turn
    the column's scaler and every prediction into NaN."""
    values = numeric(col, name, source, row_offset)
    infinite = np.isinf(values)
    if infinite.any():
        row = int(np.argmax(infinite))
        raise ColumnError(source, name, row, f"{values[row]} is not a finite number", row_offset)
    return values


def label_values(table: pa.Table, name: str, source: str, row_offset: int = 0) -> np.ndarray:
    """A label column as float64, checked to be 0/1 with nothing missing."""
    col = column(table, name, source)
    check_no_missing(col, name, source, "label", row_offset)
    values = numeric(col, name, source, row_offset, expected="a 0/1 label")
    bad = ~((values == 0) | (values == 1))
    if bad.any():
        row = int(np.argmax(bad))
        raise ColumnError(source, name, row, f"label {values[row]:g} is not 0 or 1", row_offset)
    return values


def split_lists(col: pa.ChunkedArray, sep: str, name: str, source: str) -> pa.ListArray:
    """A multi-hot column as lists of text ids: text split on `sep` (a CSV cell `a|b`), or a column that already
    holds lists (Parquet's `list<string>` or `list<int64>`), its ids as text; a null is an empty list."""
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        values = col.type.value_type
        if not (pa.types.is_string(values) or pa.types.is_large_string(values) or pa.types.is_integer(values)):
            raise ColumnError(source, name, None, f"must hold lists of ids (text or integers), not {col.type}")
        lists = pc.fill_null(col.combine_chunks(), pa.scalar([], col.type)).cast(pa.list_(pa.string()))
        return pa.ListArray.from_arrays(lists.offsets, pc.fill_null(lists.values, ""))
    if not is_text(col):
        try:
            col = pc.cast(col, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ColumnError(source, name, None, f"must hold text lists separated by {sep!r}") from None
    col = pc.fill_null(col, "").combine_chunks()
    return pc.split_pattern(col, pattern=sep)


# ------------------------------------------------------------------------------------------ tables and users


def check_table(table: pa.Table, schema: Schema, source: str, with_labels: bool = True,
                missing_ids: MissingIds = "error") -> None:
    """Validate raw rows against the schema before any split: a seeded split reorders rows, so errors
    found later would name a row of the split, not of the user's file. Columns first, then values."""
    needed = [*schema.sparse, *schema.lists, *schema.dense, *schema.scenario_columns,
              *(schema.labels if with_labels else [])]
    for name in dict.fromkeys(needed):
        column(table, name, source)
    for name in schema.scenario_columns:
        check_no_missing(table[name], name, source, "scenario")
    if missing_ids == "error":
        for name in schema.sparse:
            check_no_missing(table[name], name, source, "id")
    for name in schema.dense:
        dense_values(table[name], name, source)
    if with_labels:
        for name in schema.labels:
            label_values(table, name, source)


def user_groups(col: pa.ChunkedArray) -> np.ndarray:
    """GAUC group per row: equal user ids share a group; a row without a user id (null, or empty text) is a
    group of its own, so anonymous rows are never pooled into one pretend user."""
    encoded = pc.dictionary_encode(missing_as_null(col).combine_chunks())
    codes = encoded.indices.to_numpy(zero_copy_only=False)  # float with NaN where null
    none = np.isnan(codes) if codes.dtype.kind == "f" else np.zeros(len(codes), dtype=bool)
    groups = np.where(none, 0, codes).astype(np.int64)
    groups[none] = len(encoded.dictionary) + np.arange(int(none.sum()))
    return groups
