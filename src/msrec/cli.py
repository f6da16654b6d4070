"""The `msrec` command. Every command is a thin shell over `msrec.api`; user errors end in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from msrec.errors import MsrecError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multi-scenario recommendation: train, evaluate, predict, compare.")
out = Console()


@app.command()
def train(config: Path, out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory to write")] = None,
          set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key, e.g. train.epochs=3")] = None,
          overwrite: bool = typer.Option(False, help="Replace an existing run directory (only once training succeeds)"),
          resume: bool = typer.Option(False, help="Continue the interrupted run in --out from its newest checkpoint"),
          nproc: int = typer.Option(1, "--nproc", help="Train with N processes on this machine (wraps torchrun)")):
    """Train the model of CONFIG and write a run directory."""
    import gc

    from msrec.api import train as run_train
    from msrec.report.tables import scenario_table
    from msrec.train import distributed

    # The modules just imported (~200,000 objects, mostly torch's) live until exit: out of every collection and
    # out of the interpreter's last one, which otherwise takes ~0.8 s at exit. Training's objects stay collectable.
    gc.freeze()
    if nproc != 1 and not distributed.env_info().enabled:
        args = ["train", str(config), *(["--out", str(out_dir)] if out_dir else []),
                *[a for s in set_ or [] for a in ("--set", s)], *(["--overwrite"] if overwrite else []),
                *(["--resume"] if resume else [])]
        distributed.launch(nproc, args)
        return
    result = run_train(config, out=out_dir, overrides=set_ or [], overwrite=overwrite, resume=resume)
    if result.run_dir is None:  # under torchrun: another process wrote the run and reports it
        return
    split = "test" if "test" in result.metrics else "val"
    tasks = list(result.metrics[split]["tasks"])
    for task in tasks:
        out.print(scenario_table({result.metrics["model"]: result.metrics[split]},
                                 f"{split} AUC per scenario" + (f" - {task}" if len(tasks) > 1 else ""), task))
    out.print(f"run written to {result.run_dir}")


@app.command()
def evaluate(run_dir: Path, data: Annotated[Path | None, typer.Option(help="Labelled CSV/Parquet file")] = None,
             as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON")):
    """Evaluate a saved run on DATA (default: its configured test split)."""
    from msrec.api import evaluate as run_evaluate
    from msrec.report.tables import scenario_table
    from msrec.runs import json_safe, load_run

    run = load_run(run_dir)
    metrics = run_evaluate(run, data)
    if as_json:
        print(json.dumps(json_safe(metrics), indent=2))  # NaN (an undefined AUC) as null: valid JSON
        return
    tasks = list(metrics["tasks"])
    for task in tasks:
        out.print(scenario_table({run.config.model.name: metrics},
                                 "AUC per scenario" + (f" - {task}" if len(tasks) > 1 else ""), task))


@app.command()
def predict(run_dir: Path, input_path: Path, output_path: Path,
            scores_only: bool = typer.Option(False, help="Write only the score columns")):
    """Score INPUT_PATH with a saved run; write OUTPUT_PATH (CSV or Parquet) with one score column per task.
    A Parquet input (file or folder) is scored a chunk at a time, whatever its size."""
    from msrec.api import predict_file

    rows = predict_file(run_dir, input_path, output_path, keep_columns=not scores_only)
    out.print(f"{rows:,} rows scored -> {output_path}")


@app.command()
def extend(run_dir: Path, data: Annotated[Path, typer.Option(help="CSV/Parquet rows of the new scenarios")],
           out_dir: Annotated[Path, typer.Option("--out", help="Run directory to write (RUN is never modified)")],
           set_: Annotated[list[str] | None, typer.Option("--set", help="train.* for the extension, or extend.all=true "
                                                          "/ extend.scratch=false / extend.replicates=N / "
                                                          "extend.vocab=auto|indicators|all / "
                                                          "extend.replay=R")] = None):
    """Add the scenarios of DATA unseen in RUN_DIR's training (docs/scenarios.md, "Onboarding a new scenario")."""
    from msrec.extend import extend as run_extend
    from msrec.report.tables import extend_table, rich_table

    metrics = run_extend(run_dir, data, out_dir, set_ or [])
    for task, block in metrics["extend"]["comparison"].items():
        out.print(rich_table(extend_table(task, block)))
    out.print(f"run written to {out_dir}")


@app.command()
def export(run_dir: Path, out_file: Annotated[Path, typer.Option("--out", help="File to write: .pt (TorchScript) "
                                                                  "or .onnx (ONNX)")],
           fmt: Annotated[str | None, typer.Option("--format", help="torchscript or onnx (default: from the --out "
                                                   "extension; a mismatch is refused)", show_default=False)] = None):
    """Export a saved run's model (every scenario, any batch size) to TorchScript or ONNX."""
    from msrec.serve.export import export_run, resolve_format

    path = export_run(run_dir, fmt, out_file)
    out.print(f"{resolve_format(fmt, path)} model written to {path}")


@app.command()
def serve(run_dir: Path, host: str = typer.Option("127.0.0.1", help="Address to listen on"),
          port: int = typer.Option(8000, help="Port to listen on"),
          max_records: int = typer.Option(10_000, help="Most records one request may hold")):
    """Serve a saved run over HTTP: POST /predict, GET /health, GET /metadata."""
    from msrec.serve.app import serve as run_serve

    run_serve(run_dir, host=host, port=port, max_records=max_records)


@app.command()
def datasets():
    """List the built-in datasets."""
    from msrec.data.datasets import DATASETS

    for d in DATASETS.values():
        out.print(f"[bold]{d.name}[/bold]  {d.description}")


@app.command()
def models(name: Annotated[str | None, typer.Argument(help="A model: print its options", show_default=False)] = None):
    """List the models with a one-line description; with NAME, that model's options with their defaults and
    meanings (read from its options class, so they are the ones a config is checked against)."""
    from msrec.models.registry import describe_options, list_models

    entries = {entry.name: entry for entry in list_models()}
    if name is None:
        for entry in entries.values():
            out.print(f"[bold]{entry.name:<16}[/bold] {escape(entry.description)}", highlight=False, soft_wrap=True)
        out.print("\n`msrec models NAME` prints a model's options.", highlight=False)
        return
    if name not in entries:
        raise MsrecError(f"unknown model `{name}` (models: {', '.join(entries)})")
    out.print(f"[bold]{name}[/bold]: {escape(entries[name].description)}", highlight=False, soft_wrap=True)
    out.print("options (under `model:` in a config, or --set model.KEY=VALUE), with their defaults:",
              highlight=False, soft_wrap=True)
    for key, type_, default, meaning in describe_options(name):
        out.print(f"  [bold]{key}[/bold]: {escape(_yaml_value(default))}  [dim]({escape(type_)})[/dim]\n"
                  f"      {escape(meaning)}", highlight=False, soft_wrap=True)


def _yaml_value(value: object) -> str:
    """A default as it is written in a config file (true, null, [256, 128])."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


@app.command()
def demo(rows: int = typer.Option(None, help="Synthetic rows (default: the demo's sizing, docs/benchmark.md)",
                                  show_default=False),
         epochs: int = typer.Option(None, help="Most epochs per model (early stopping ends them sooner)",
                                    show_default=False),
         model: Annotated[list[str] | None, typer.Option(help="Models to run (default: all)")] = None,
         out_dir: Annotated[Path, typer.Option("--out", help="Report folder (replaced)")] = Path("runs/demo")):
    """A short benchmark: every model once on the synthetic default; prints the per-scenario AUC table with
    the oracle row and its reading, and writes the report (report.html, report.md, results.csv) to --out."""
    from msrec.bench.demo import DEMO_EPOCHS, DEMO_ROWS, run_demo

    run_demo(rows=rows or DEMO_ROWS, epochs=epochs or DEMO_EPOCHS, models=model, out=out_dir, console=out)


@app.command()
def benchmark(spec: Path,
              out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default runs/benchmarks/"
                                                           "SPEC-NAME); resumed when it holds finished runs")] = None,
              model: Annotated[list[str] | None, typer.Option(help="Run only these models of the spec")] = None,
              md: Annotated[Path | None, typer.Option(help="Also write the Markdown report here (plots beside it)")]
              = None,
              overwrite: bool = typer.Option(False, help="Redo runs already stored in the output folder")):
    """Run the grid of SPEC (models x seeds), resumable, and write results.csv, report.md and report.html
    (spec keys: docs/benchmark.md)."""
    from msrec.bench.runner import run_benchmark
    from msrec.report.tables import rich_table

    result = run_benchmark(spec, out=out_dir, only=model, overwrite=overwrite, console=out, markdown=md)
    for table in result.summary.auc_tables:
        out.print(rich_table(table))
    for line in filter(None, result.summary.reading):
        out.print(f"[bold]Reading.[/bold] {line}", highlight=False, soft_wrap=True)
    out.print(f"report: {result.out / 'report.html'} ({result.out / 'report.md'}, {result.out / 'results.csv'})",
              highlight=False)
    if result.failures:
        out.print(f"[red]{len(result.failures)} run(s) failed[/red]: "
                  + ", ".join(f"{f.label} seed {f.seed}" for f in result.failures), highlight=False)
        raise typer.Exit(1)


@app.command()
def tune(config: Annotated[Path, typer.Argument(help="A run config (with an optional tune: section), or a benchmark "
                                                 "spec: each of its models")],
         trials: Annotated[int | None, typer.Option(help="Trials in each study, the default config's included "
                                                    "(default: tune.trials)", show_default=False)] = None,
         out_dir: Annotated[Path, typer.Option("--out", help="Study folder: best.yaml, trials.csv / .md, plots/ "
                                               "(a spec: one folder per model)")] = Path("runs/tune"),
         storage: Annotated[str | None, typer.Option(help="Optuna storage URL shared by workers (default: "
                                                     "sqlite:///OUT/study.db)", show_default=False)] = None,
         set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key of the config, e.g. "
                                                        "train.epochs=3")] = None):
    """Tune CONFIG's model with Optuna (TPE, pruning per epoch, trial 0 = CONFIG itself); run it again to continue
    the study, or in several processes on one --storage to share it (docs/tuning.md)."""
    from msrec.config import read_yaml

    raw = read_yaml(config, "config file")
    if isinstance(raw, dict) and set(raw) & {"models", "seeds", "config", "title", "reference", "resplit"}:
        from msrec.bench.tuning import tune_spec

        if set_:
            raise MsrecError("--set applies to a run config; edit the spec's train / models keys instead")
        results = tune_spec(config, out_dir, trials=trials, storage=storage, console=out)
        for label, result in results.items():
            out.print(f"{label}: {result.out / 'best.yaml'}", highlight=False)
        return
    from msrec.tune.study import tune as run_tune

    result = run_tune(config, out_dir, trials=trials, storage=storage, overrides=set_ or [], console=out)
    out.print(f"best: trial {result.best_number}, validation {result.monitor} {result.best_value:.4f} (trial 0, the "
              f"config as given: {result.default_value:.4f}); {result.finished} trials finished", highlight=False)
    out.print(f"best config: {result.out / 'best.yaml'}  (msrec train {result.out / 'best.yaml'}); trials: "
              f"{result.out / 'trials.md'}", highlight=False)


def main() -> None:
    try:
        app()
    except MsrecError as err:
        message = " ".join(str(err).split())  # always one line, whatever a library's message held
        Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
