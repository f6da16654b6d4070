"""Reading and writing tables (CSV or Parquet, chosen by suffix) with pyarrow, and errors that name the file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msrec.errors import MsrecError

PARQUET_SUFFIXES = (".parquet", ".pq", ".brotli")


def is_parquet(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() or any(s in PARQUET_SUFFIXES for s in p.suffixes)


def read_table(path: str | Path, string_columns: list[str] | None = None) -> pa.Table:
    """Read a CSV or Parquet file (or a folder of Parquet files).

    `string_columns` are read from CSV as text, so an id such as zip code "01234" keeps its leading zero
    and a column mixing digits and letters is read the same way in every file.
    """
    path = Path(path)
    if not path.exists():
        raise MsrecError(f"{path}: file not found")
    try:
        if is_parquet(path):
            table = pq.read_table(path)
        else:
            if path.stat().st_size == 0:
                raise MsrecError(f"{path}: the file is empty")
            header = pacsv.open_csv(path).schema.names
            types = {c: pa.string() for c in (string_columns or []) if c in header}
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
    except MsrecError:
        raise
    except (pa.ArrowInvalid, OSError) as err:
        raise MsrecError(f"{path}: cannot be read as {'Parquet' if is_parquet(path) else 'CSV'}: {err}") from None
    if table.num_rows == 0:
        raise MsrecError(f"{path}: the file has no data rows")
    return table


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write atomically: a failed write never leaves a half file where the user's file was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if is_parquet(path):
            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
