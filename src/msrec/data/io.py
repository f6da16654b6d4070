"""Reading and writing tables (CSV or Parquet, chosen by suffix) with pyarrow, and errors that name the file; reading
saved weights into a model's own tensors."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary file beside `path` to write into, renamed to `path` when the block completes and removed
    when it fails: a failed or killed write never leaves a half file where the user's file was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write CSV or Parquet (by suffix), atomically (`atomic_output`)."""
    with atomic_output(path) as tmp:
        if is_parquet(path):
            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp)


@contextmanager
def table_writer(path: str | Path) -> Iterator[Callable[[pa.Table], None]]:
    """A function writing a CSV or Parquet file (by suffix) one table at a time, atomically (`atomic_output`);
    every table must have the first one's columns."""
    with atomic_output(path) as tmp:
        writer = None

        def write(table: pa.Table) -> None:
            nonlocal writer
            if writer is None:
                writer = (pq.ParquetWriter if is_parquet(path) else pacsv.CSVWriter)(tmp, table.schema)
            writer.write_table(table)

        try:
            yield write
        finally:
            if writer is not None:
                writer.close()


SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def read_tensors_into(path: str | Path, tensors: dict) -> bool:
    """Reads a safetensors file straight into `tensors` (a module's `state_dict()`: its own storage), with plain
    reads: no second copy of a 10^7-row table, and no mapped file whose pages would count as resident memory.
    False, having read nothing, when the file's names, dtypes or shapes are not exactly those of `tensors`
    (the caller then loads it the usual way, with its checks and any loading hooks)."""
    import json

    import torch

    targets = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    with open(path, "rb") as f:
        total = os.fstat(f.fileno()).st_size
        size = int.from_bytes(f.read(8), "little")
        if total < 8 or not 0 < size <= total - 8:
            return False
        try:
            header = {k: v for k, v in json.loads(f.read(size)).items() if k != "__metadata__"}
            end = max((info["data_offsets"][1] for info in header.values()), default=0)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            return False
        if 8 + size + end != total or set(header) != set(targets) or any(
                list(targets[k].shape) != info["shape"] or str(targets[k].dtype) != "torch." + SAFETENSORS_DTYPES.get(
                    info["dtype"], "?") or not targets[k].is_contiguous() or targets[k].device.type != "cpu"
                for k, info in header.items()):
            return False
        for key, info in header.items():
            f.seek(8 + size + info["data_offsets"][0])
            if f.readinto(memoryview(targets[key].detach().view(-1).view(torch.uint8).numpy())) != \
                    info["data_offsets"][1] - info["data_offsets"][0]:
                raise OSError(f"{path}: {key} is shorter than its header says")
    return True
