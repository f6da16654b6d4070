"""The deployer's path: raw rows -> the inputs of a model exported by `msrec export`, by name.

    from msrec.serve import InputEncoder

    inputs = InputEncoder("runs/ml-dnn").encode(rows)   # {"sparse": ..., "dense": ..., "scenario": ..., "list_0": ...}
    logits, scores = session.run(["logits", "scores"], inputs)   # an ONNX file from `msrec export`

`rows` may be a list of dicts (checked and coerced as `msrec serve` checks a request), a pyarrow Table or
pandas DataFrame, or the path of a CSV / Parquet file (read as `msrec predict` reads it). Labels are not
needed. The arrays are numpy, in the dtypes the exported graph takes (ids int64, dense float32), so the
same rows give the same scores through onnxruntime as through `msrec predict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from msrec.data.encode import Encoder
from msrec.data.io import read_table
from msrec.data.table import Batch
from msrec.errors import MsrecError
from msrec.runs import Run
from msrec.serve.export import batch_inputs, input_names
from msrec.serve.records import RecordTable


class InputEncoder:
    """A run's encoder, turned towards deployment. Built from a run directory (only `encoder.json` is read),
    a loaded `Run`, or an `Encoder`; reuse it across calls (the record checks are built once)."""

    def __init__(self, run: str | Path | Run | Encoder):
        if isinstance(run, Run | Encoder):
            self.encoder = run.encoder if isinstance(run, Run) else run
        else:
            path = Path(run)
            if not (path / "encoder.json").is_file():
                raise MsrecError(f"{path}: not a run directory (no encoder.json)")
            self.encoder = Encoder.load(path / "encoder.json")
        self.records = RecordTable(self.encoder)
        self.names = input_names(self.encoder.spec())

    def table(self, rows: Any, source: str = "rows") -> pa.Table:
        """Raw rows as the Arrow table the encoder reads."""
        if isinstance(rows, pa.Table):
            return rows
        if isinstance(rows, str | Path):
            return read_table(rows, string_columns=self.encoder.schema.text_columns())
        if type(rows).__module__.startswith("pandas"):
            return pa.Table.from_pandas(rows, preserve_index=False)
        if isinstance(rows, Sequence) and all(isinstance(r, Mapping) for r in rows):
            return self.records.table(list(rows))
        raise MsrecError(f"{source}: expected a list of dicts, a pyarrow Table, a pandas DataFrame or a file path, "
                         f"got {type(rows).__name__}")

    def encode(self, rows: Any, source: str = "rows") -> dict[str, np.ndarray]:
        """The exported model's inputs for `rows`, by input name (`sparse`, `dense`, `scenario`, `list_0`, ...)."""
        table = self.table(rows, source)
        encoded = self.encoder.transform(table, source, with_labels=False, with_evaluation_columns=False)
        batch = Batch(sparse=encoded.sparse, dense=encoded.dense, scenario=encoded.scenario, lists=encoded.lists)
        return {name: np.ascontiguousarray(t.numpy()) for name, t in zip(self.names, batch_inputs(batch), strict=True)}
