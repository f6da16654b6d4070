"""The HTTP scoring service of a run directory (FastAPI + uvicorn).

    POST /predict   a JSON list of records with raw feature values (as in the training data) and the
                    scenario -> {"tasks": [...], "scores": [[one per task], ...]}, one row per record, in order
    GET  /health    {"status": "ok"}
    GET  /metadata  model, scenarios by name, features, tasks, version

A request is validated by pydantic against the run's own schema (a record type built from the encoder:
integer or text ids, numbers or null for dense values, text lists, the known scenario values), so a
missing feature, a wrong type or an unknown scenario is a 422 naming the record and the field; an
oversized body or too many records is a 413. The validated records become one Arrow table, encoded by
the run's own encoder (unknown ids -> the unknown index) and scored as one batch
(`msrec.api.score_table`): no per-record model call, no per-record Python in our code. Scoring runs in
the thread pool, so a slow request does not stop /health; an unexpected error is a 500 for that request
only, and the process keeps serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from typing_extensions import TypedDict  # pydantic needs this one (not typing's) before Python 3.12

from msrec.data.encode import Encoder
from msrec.errors import MsrecError

DEFAULT_MAX_RECORDS = 10_000
BYTES_PER_RECORD = 4096  # the body limit is max_records times this (and at least 1 MiB)
INT64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
DENSE = Annotated[float, Field(allow_inf_nan=False)] | None


def record_schema(encoder: Encoder) -> tuple[type, pa.Schema]:
    """The pydantic record type of a request and the Arrow schema of the table its records become."""
    s = encoder.schema
    types: dict[str, Any] = {}
    arrow: dict[str, pa.DataType] = {}
    for name in s.sparse:
        kind = encoder.sparse[name]["kind"]
        types[name], arrow[name] = (INT64, pa.int64()) if kind == "int" else (str, pa.string())
    for name in s.dense:
        types[name], arrow[name] = DENSE, pa.float64()
    for name in s.lists:  # the raw text list, separator-joined as in the training data
        types[name], arrow[name] = str | None, pa.string()
    values = tuple(encoder.scenario["values"])
    types[s.scenario] = Literal[values]  # type: ignore[valid-type]
    arrow[s.scenario] = pa.int64() if encoder.scenario["kind"] == "int" else pa.string()
    record = TypedDict("Record", types)  # type: ignore[misc]  (TypedDict: any column name is a valid key)
    record.__pydantic_config__ = ConfigDict(extra="ignore", coerce_numbers_to_str=True)  # type: ignore[attr-defined]
    return record, pa.schema(list(arrow.items()))


def _problem(loc: list, msg: str, kind: str) -> dict[str, Any]:
    """One error entry; `record` and `field` are spelt out when the location has them."""
    entry: dict[str, Any] = {"loc": ["body", *loc], "msg": msg, "type": kind}
    if loc and isinstance(loc[0], int):
        entry["record"] = loc[0]
        if len(loc) > 1:
            entry["field"] = str(loc[1])
    return entry


class Service:
    """A loaded run: validates request bodies and scores them."""

    def __init__(self, run_dir: str | Path, max_records: int = DEFAULT_MAX_RECORDS):
        from msrec.runs import load_run

        if max_records < 1:
            raise MsrecError("--max-records must be at least 1")
        self.run = load_run(run_dir)  # fails here, at start-up, on a missing or broken file
        self.max_records = max_records
        self.max_bytes = max(1 << 20, max_records * BYTES_PER_RECORD)
        self.record, self.arrow_schema = record_schema(self.run.encoder)
        self.adapter = TypeAdapter(Annotated[list[self.record], Field(max_length=max_records)])  # type: ignore[name-defined]
        self.tasks = list(self.run.encoder.schema.labels)
        self._warm_up()

    def _warm_up(self) -> None:
        """One forward pass before the first request (also proves the model runs)."""
        from msrec.serve.export import example_batch

        with torch.no_grad():
            self.run.model(example_batch(self.run.encoder.spec()))

    def metadata(self) -> dict[str, Any]:
        from msrec import __version__

        enc, s = self.run.encoder, self.run.encoder.schema
        return {
            "model": self.run.config.model.name, "version": __version__, "run": self.run.path.name,
            "scenario": {"column": s.scenario, "names": enc.scenario_names},
            "features": {
                "sparse": [{"name": n, "type": "integer" if enc.sparse[n]["kind"] == "int" else "string",
                            "vocabulary": len(enc.sparse[n]["vocab"])} for n in s.sparse],
                "dense": [{"name": n, "type": "number", "nullable": True} for n in s.dense],
                "lists": [{"name": n, "type": "string", "separator": sep} for n, sep in s.lists.items()],
                "scenario_features": list(s.scenario_features)},
            "tasks": self.tasks, "max_records": self.max_records}

    def predict(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for a /predict body."""
        from msrec.api import score_table

        try:
            records = self.adapter.validate_json(body)
        except ValidationError as err:
            return self._invalid(err)
        table = pa.Table.from_pylist(records, schema=self.arrow_schema)
        try:
            scores = score_table(self.run, table, "request")
        except MsrecError as err:  # whatever validation let through, the encoder still names
            return 422, {"detail": [_problem([], str(err), "encoding_error")]}
        return 200, {"tasks": self.tasks, "scores": scores.tolist()}

    def _invalid(self, err: ValidationError) -> tuple[int, dict[str, Any]]:
        errors = err.errors(include_url=False, include_input=False, include_context=False)
        if any(e["type"] == "too_long" and not e["loc"] for e in errors):
            return 413, {"detail": [_problem([], f"too many records: at most {self.max_records} per request",
                                              "too_many_records")]}
        status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
        return status, {"detail": [_problem(list(e["loc"]), e["msg"], e["type"]) for e in errors[:20]]}


def create_app(run_dir: str | Path, max_records: int = DEFAULT_MAX_RECORDS) -> FastAPI:
    service = Service(run_dir, max_records)
    app = FastAPI(title="msrec scoring service", version=service.metadata()["version"],
                  description=f"Model `{service.run.config.model.name}` from run {service.run.path.name}")
    app.state.service = service
    record_json_schema = service.adapter.json_schema()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return service.metadata()

    @app.post("/predict", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": record_json_schema}}}})
    async def predict(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > service.max_bytes:
            return _too_large(service.max_bytes)
        chunks, size = [], 0
        async for chunk in request.stream():  # bodies without a length are counted as they arrive
            size += len(chunk)
            if size > service.max_bytes:
                return _too_large(service.max_bytes)
            chunks.append(chunk)
        status, body = await run_in_threadpool(service.predict, b"".join(chunks))
        return JSONResponse(body, status_code=status)

    return app


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": [_problem([], f"request body larger than {limit} bytes", "body_too_large")]},
                        status_code=413)


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_records: int = DEFAULT_MAX_RECORDS) -> None:
    """`msrec serve`: load the run (a missing file fails here, before listening), then serve until stopped."""
    import uvicorn

    app = create_app(run_dir, max_records)
    uvicorn.run(app, host=host, port=port, log_level="info")


__all__ = ["DEFAULT_MAX_RECORDS", "Service", "create_app", "record_schema", "serve"]
