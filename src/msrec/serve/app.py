"""The HTTP scoring service of a run directory (FastAPI + uvicorn).

    POST /predict   a JSON list of records with raw feature values (as in the training data) and the
                    scenario -> {"tasks": [...], "scores": [[one per task], ...]}, one row per record, in order
    GET  /health    {"status": "ok"}
    GET  /metadata  model, scenarios by name, features, tasks, version

A request is checked against the run's own schema (`msrec.serve.records`: integer or text ids, coerced as
`msrec predict` coerces a CSV, numbers or null for dense values, text lists, the known scenario values), so
a missing feature, a wrong type or an unknown scenario is a 422 naming the record and the field, as is a
value only the encoder refuses (a blank id under `data.missing_ids: error`); an oversized body or too many
records is a 413. The records become one Arrow table, encoded by the run's own encoder (unknown ids -> the
unknown index) and scored as one batch (`msrec.api.score_table`): no per-record model call. Scoring runs in
the thread pool, so a slow request does not stop /health; an unexpected error is a 500 for that request
only, and the process keeps serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from msrec.errors import MsrecError
from msrec.serve.records import RecordError, RecordTable, encoding_problem, problem

DEFAULT_MAX_RECORDS = 10_000
BYTES_PER_RECORD = 4096  # the body limit is max_records times this (and at least 1 MiB)
SOURCE = "request"


class Service:
    """A loaded run: validates request bodies and scores them."""

    def __init__(self, run_dir: str | Path, max_records: int = DEFAULT_MAX_RECORDS):
        from msrec.runs import load_run

        if max_records < 1:
            raise MsrecError("--max-records must be at least 1")
        self.run = load_run(run_dir)  # fails here, at start-up, on a missing or broken file
        self.max_records = max_records
        self.max_bytes = max(1 << 20, max_records * BYTES_PER_RECORD)
        self.records = RecordTable(self.run.encoder, max_records)
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
                "sparse": [{"name": n, "type": "integer" if enc.sparse[n].kind == "int" else "string",
                            **({"hash_buckets": enc.sparse[n].buckets} if enc.sparse[n].buckets else
                               {"vocabulary": len(enc.sparse[n].vocab)})} for n in s.sparse],
                "dense": [{"name": n, "type": "number", "nullable": True} for n in s.dense],
                "lists": [{"name": n, "type": "string", "separator": sep} for n, sep in s.lists.items()],
                "scenario_features": list(s.scenario_features)},
            "tasks": self.tasks, "max_records": self.max_records}

    def predict(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for a /predict body."""
        from msrec.api import score_table

        try:
            table = self.records.table(body)
        except RecordError as err:
            return err.status, {"detail": err.problems}
        try:
            scores = score_table(self.run, table, SOURCE)
        except MsrecError as err:  # what only the encoder finds (a blank id under data.missing_ids: error)
            return 422, {"detail": [encoding_problem(err, SOURCE)]}
        return 200, {"tasks": self.tasks, "scores": scores.tolist()}


def create_app(run_dir: str | Path, max_records: int = DEFAULT_MAX_RECORDS) -> FastAPI:
    service = Service(run_dir, max_records)
    app = FastAPI(title="msrec scoring service", version=service.metadata()["version"],
                  description=f"Model `{service.run.config.model.name}` from run {service.run.path.name}")
    app.state.service = service
    record_json_schema = service.records.adapter.json_schema()

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
    return JSONResponse({"detail": [problem([], f"request body larger than {limit} bytes", "body_too_large")]},
                        status_code=413)


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_records: int = DEFAULT_MAX_RECORDS) -> None:
    """`msrec serve`: load the run (a missing file fails here, before listening), then serve until stopped."""
    import uvicorn

    app = create_app(run_dir, max_records)
    uvicorn.run(app, host=host, port=port, log_level="info")


__all__ = ["DEFAULT_MAX_RECORDS", "Service", "create_app", "serve"]
