"""Raw records (JSON objects, Python dicts) checked against a run's encoder and turned into one Arrow table.

The coercions are those `msrec predict` applies to a CSV file, where every id arrives as text:

- an integer id column (or scenario) takes a JSON integer within int64, an integral number (`7.0`), or text
  that the encoder's cast reads as an integer (`"7"`, as in a CSV); `1.5`, an id beyond int64 or `"abc"`
  is refused;
- a text id column (or scenario) takes text, or a JSON number whose text form (`0`, `7.0` -> `"7"`) is a
  known value: pandas turns a CSV's `"0"` into `0`; a number naming no known value is refused rather than
  silently scored as unknown (send unknown ids as text);
- a blank id (`null`, `""`, `"nan"`) is left to the encoder, which applies the run's `data.missing_ids`;
- a multi-hot list takes its text as in the training data (`"a|b"`) or a JSON array of ids (`["a", "b"]`).

Every problem is reported with the record (counted from 0) and the field it is in, whether pydantic or the
encoder found it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

import pyarrow as pa
from pydantic import ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError, WithJsonSchema
from typing_extensions import TypedDict  # pydantic needs this one (not typing's) before Python 3.12

from msrec.data.checks import ColumnError
from msrec.data.encode import Encoder
from msrec.errors import MsrecError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DENSE = Annotated[float, Field(allow_inf_nan=False)] | None


def problem(loc: list, msg: str, kind: str) -> dict[str, Any]:
    """One error entry; `record` and `field` are spelt out when the location has them."""
    entry: dict[str, Any] = {"loc": ["body", *loc], "msg": msg, "type": kind}
    if loc and isinstance(loc[0], int):
        entry["record"] = loc[0]
        if len(loc) > 1:
            entry["field"] = str(loc[1])
    return entry


class RecordError(MsrecError):
    """Records that cannot be encoded; `problems` are the service's 422 `detail` entries."""

    def __init__(self, problems: list[dict[str, Any]], status: int = 422):
        first = problems[0]
        where = f"record {first['record']}, field `{first['field']}`: " if "field" in first else ""
        super().__init__(f"{where}{first['msg']}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        self.problems, self.status = problems, status


def _text_form(value: float) -> str:
    """A JSON number as the text a CSV would hold: 0 -> "0", 7.0 -> "7", 1.5 -> "1.5"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _int_id(value: Any) -> int | str | None:
    """An integer id: a JSON integer within int64 or an integral number. Text (`"7"`, `""`) is kept as text
    for the encoder to cast and check column-wise, as it casts a CSV's cells for predict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{value} is beyond int64")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"{value} is not an integer id (the training data had integer ids)")
        return _int_id(int(value))
    raise ValueError("expected an integer id")


def _text_id(known: Callable[[], frozenset] | None) -> Callable[[Any], str | None]:
    """`known` None: a hashed column, where every text is a value (it has no vocabulary to check against)."""
    def check(value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            text = _text_form(value)
            if known is None or text in known():
                return text
            raise ValueError(f"{value} is a number and {text!r} is not a known value of this text column "
                             "(send ids as text)")
        raise ValueError("expected text")

    return check


def _scenario(kind: str, values: list) -> Callable[[Any], Any]:
    """The check of one scenario column (each level's own values where the scenario has several columns; the
    encoder then finds the combination, or its parent level)."""
    known = frozenset(values)

    def check(value: Any) -> Any:
        if kind == "int":
            value = _int_id(value)
            if isinstance(value, str):  # cast and looked up by the encoder, as predict does
                return value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = _text_form(value)
        elif value is not None and not isinstance(value, str):
            raise ValueError("expected text")
        if value is None:
            raise ValueError("missing scenario")
        if value not in known:
            shown = ", ".join(map(str, values[:20])) + (f", ... ({len(values)} in all)" if len(values) > 20 else "")
            raise ValueError(f"unknown scenario {value!r} (known: {shown})")
        return value

    return check


def _id_list(sep: str) -> Callable[[Any], str | None]:
    """A multi-hot value: the text as in the training data (pieces joined by `sep`), or a JSON array of ids
    (text, or numbers in their text form), joined by `sep` for the encoder to split as it splits a CSV cell. An
    id holding the separator is refused: it would be split into other ids."""
    def check(value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected text joined by {sep!r} or an array of ids")  # noqa: TRY004 (pydantic: 422)
        pieces = []
        for item in value:
            if isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item):
                item = _text_form(item)
            if not isinstance(item, str):
                raise ValueError(f"expected an array of ids (text or numbers), got {item!r}")  # noqa: TRY004
            if sep in item:
                raise ValueError(f"id {item!r} holds the separator {sep!r}")
            pieces.append(item)
        return sep.join(pieces)

    return check


INT_SCHEMA = {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}
TEXT_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]}
LIST_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [{"type": "string"},
                                                                               {"type": "number"}]}},
                         {"type": "null"}]}


class RecordTable:
    """A run's record type (pydantic) and the Arrow table its records become, ready for `Encoder.transform`."""

    def __init__(self, encoder: Encoder, max_records: int | None = None):
        self.encoder, self.max_records = encoder, max_records
        self._vocabs: dict[str, frozenset] = {}
        s = encoder.schema
        types: dict[str, Any] = {}
        arrow: dict[str, pa.DataType] = {}
        for name in s.sparse:
            if encoder.sparse[name].kind == "int":
                types[name], arrow[name] = Annotated[Any, PlainValidator(_int_id), WithJsonSchema(INT_SCHEMA)], \
                    pa.int64()
            else:
                check = _text_id(None if encoder.sparse[name].buckets else lambda name=name: self._vocab(name))
                types[name], arrow[name] = Annotated[Any, PlainValidator(check), WithJsonSchema(TEXT_SCHEMA)], \
                    pa.string()
        for name in s.dense:
            types[name], arrow[name] = DENSE, pa.float64()
        for name, sep in s.lists.items():  # separator-joined text as in the training data, or an array of ids
            types[name] = Annotated[Any, PlainValidator(_id_list(sep)), WithJsonSchema(LIST_SCHEMA)]
            arrow[name] = pa.string()
        for name, kind, values in encoder.scenario_columns():
            types[name] = Annotated[Any, PlainValidator(_scenario(kind, values)), WithJsonSchema({"enum": values})]
            arrow[name] = pa.int64() if kind == "int" else pa.string()
        record = TypedDict("Record", types)  # type: ignore[misc]  (TypedDict: any column name is a valid key)
        record.__pydantic_config__ = ConfigDict(extra="ignore")  # type: ignore[attr-defined]
        self.record = record
        self.arrow_schema = pa.schema(list(arrow.items()))
        self.adapter = TypeAdapter(Annotated[list[record], Field(max_length=max_records)])  # type: ignore[valid-type]

    def _vocab(self, name: str) -> frozenset:
        """A text column's known values, built on the first number sent for it (most clients send text)."""
        if name not in self._vocabs:
            self._vocabs[name] = frozenset(v for v in self.encoder.sparse[name].vocab if v is not None)
        return self._vocabs[name]

    def table(self, records: bytes | list) -> pa.Table:
        """Validated records (a JSON body or Python dicts) as a table; RecordError names record and field."""
        try:
            rows = self.adapter.validate_json(records) if isinstance(records, bytes | str) else \
                self.adapter.validate_python(records)
        except ValidationError as err:
            raise self._invalid(err) from None
        try:
            return pa.Table.from_pylist(rows, schema=self.arrow_schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # text in an integer column: a text column, cast later
            columns = {}
            for field in self.arrow_schema:
                values = [row[field.name] for row in rows]
                if field.type == pa.int64() and any(isinstance(v, str) for v in values):
                    columns[field.name] = pa.array([v if v is None else str(v) for v in values], pa.string())
                else:
                    columns[field.name] = pa.array(values, field.type)
            return pa.table(columns)

    def _invalid(self, err: ValidationError) -> RecordError:
        errors = err.errors(include_url=False, include_input=False, include_context=False)
        if any(e["type"] == "too_long" and not e["loc"] for e in errors):
            return RecordError([problem([], f"too many records: at most {self.max_records} per request",
                                        "too_many_records")], 413)
        status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
        return RecordError([problem(list(e["loc"]), e["msg"].removeprefix("Value error, "), e["type"])
                            for e in errors[:20]], status)


def encoding_problem(err: MsrecError, source: str) -> dict[str, Any]:
    """The 422 entry of an error the encoder raised on a request's table: a ColumnError knows the field and
    the 0-based row, which is the record's index (the table holds the records in order)."""
    if not isinstance(err, ColumnError):
        return problem([], str(err), "encoding_error")
    entry = problem([err.row] if err.row is not None else [], err.problem, "encoding_error")
    entry["loc"].append(err.column)
    entry["field"] = err.column
    return entry
