"""The benchmark runner: a killed grid resumes to the same results, a failed run is recorded and the grid
goes on, the report's statistics are right, and the HTML report carries its plots."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from msrec.bench import runner
from msrec.bench.runner import run_benchmark
from msrec.bench.spec import resolve_grid
from msrec.bench.store import RunStore
from msrec.errors import MsrecError
from msrec.report.stats import paired_difference, replicate_metrics, weighted_auc
from msrec.train.metrics import auc

SMALL = {"embed_dim": 4, "hidden": [16]}
SPEC = {
    "title": "tiny",
    "data": {"dataset": "synthetic", "options": {"rows": 1500, "users": 200, "items": 100}},
    "train": {"epochs": 2, "batch_size": 256, "lr": 0.01, "threads": 1},
    "models": [{"name": "dnn", "options": SMALL}, {"name": "separate", "options": SMALL}],
    "seeds": 2,
    "bootstrap": 100,
}


def quiet():
    from rich.console import Console

    return Console(file=io.StringIO(), width=200)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The tiny grid run without interruption."""
    out = tmp_path_factory.mktemp("bench") / "full"
    return run_benchmark(SPEC, out=out, console=quiet())


def test_uninterrupted_grid_writes_every_run_and_the_report(full):
    assert full.ran == 4 and not full.failures
    assert sorted(p.name for p in (full.out / "runs").glob("*.json")) == [
        "dnn--seed2022.json", "dnn--seed2023.json", "separate--seed2022.json", "separate--seed2023.json"]
    rows = (full.out / "results.csv").read_text().splitlines()
    assert rows[0] == "model,seed,scenario,task,metric,value"
    # one row per model x seed x scenario (3 + overall + macro + weighted macro) x task x metric
    keys = {tuple(r.split(",")[:5]) for r in rows[1:]}
    assert len(keys) == len(rows) - 1
    assert {(m, s) for m, s, *_ in keys} == {(m, str(s)) for m in ("dnn", "separate") for s in (2022, 2023)}
    assert {k[2] for k in keys} == {"s0", "s1", "s2", "overall", "macro", "weighted_macro"}
    stored = json.loads((full.out / "runs" / "dnn--seed2022.json").read_text())
    assert f"{stored['metrics']['test']['tasks']['click']['scenarios']['s1']['auc']!r}" in (full.out / "results.csv").read_text()
    md = (full.out / "report.md").read_text()
    for section in ("Test AUC per scenario", "Test logloss per scenario", "Difference from dnn (AUC)", "Training",
                    "| *oracle* |", "plots/auc.png", "plots/curves.png"):
        assert section in md


def test_killed_grid_resumes_to_the_same_results(full, tmp_path):
    """A child process runs the grid and is SIGKILLed in the middle of its second run; the resumed grid
    trains only the missing runs and writes the same results.csv as the uninterrupted one."""
    out = tmp_path / "killed"
    started = tmp_path / "second-run-started"
    child = textwrap.dedent(f"""
        import time
        from msrec.bench import runner
        calls = []
        train_one = runner._train_one
        def slow(cfg, data):
            calls.append(1)
            if len(calls) == 2:  # the second run: announce it, then hang until killed
                result = train_one(cfg, data)
                open({str(started)!r}, "w").close()
                time.sleep(600)
            return train_one(cfg, data)
        runner._train_one = slow
        runner.run_benchmark({SPEC!r}, out={str(out)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never reached its second run"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [p.name for p in (out / "runs").glob("*.json")] == ["dnn--seed2022.json"]
    assert not (out / "results.csv").exists()

    resumed = run_benchmark(SPEC, out=out, console=quiet())
    assert resumed.ran == 3 and not resumed.failures
    assert (out / "results.csv").read_text() == (full.out / "results.csv").read_text()


def test_failed_run_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    real = runner._train_one

    def flaky(cfg, data):
        if cfg.model.name == "dnn" and cfg.train.seed == 2022:
            raise RuntimeError("out of luck")
        return real(cfg, data)

    monkeypatch.setattr(runner, "_train_one", flaky)
    out = tmp_path / "grid"
    result = run_benchmark(SPEC, out=out, console=quiet())
    assert result.ran == 3
    assert [(f.label, f.seed, f.error) for f in result.failures] == [("dnn", 2022, "RuntimeError: out of luck")]
    failed = json.loads((out / "runs" / "dnn--seed2022.failed.json").read_text())
    assert "out of luck" in failed["traceback"]
    assert not (out / "runs" / "dnn--seed2022.json").exists()
    md = (out / "report.md").read_text()
    assert "## Failed runs" in md and "RuntimeError: out of luck" in md
    assert "dnn,2022," not in (out / "results.csv").read_text()
    assert "separate,2022," in (out / "results.csv").read_text()

    monkeypatch.setattr(runner, "_train_one", real)  # the next resume retries the failed run only
    again = run_benchmark(SPEC, out=out, console=quiet())
    assert again.ran == 1 and not again.failures
    assert not (out / "runs" / "dnn--seed2022.failed.json").exists()


def _images(html: str) -> list[bytes]:
    found = re.findall(r"<img [^>]*src='data:image/png;base64,([^']+)'", html)
    return [base64.b64decode(m, validate=True) for m in found]


def test_html_report_is_self_contained_with_decodable_png_plots(full):
    from PIL import Image

    html = (full.out / "report.html").read_text()
    images = _images(html)
    assert len(images) == 3 == html.count("<img ")  # auc.png, size.png, curves.png
    for png in images:
        with Image.open(io.BytesIO(png)) as img:
            img.verify()
            assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 100
    assert "src='http" not in html and "<link" not in html  # nothing to fetch


def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(b)), None)


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium on this machine")
def test_html_report_renders_in_headless_chromium_with_its_images(full, tmp_path):
    probe = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
             "document.body.setAttribute('data-loaded', imgs.filter(i => i.complete && i.naturalWidth > 0).length"
             " + '/' + imgs.length); });</script></body>")
    page = tmp_path / "report.html"
    page.write_text((full.out / "report.html").read_text().replace("</body>", probe))
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], check=False, capture_output=True, text=True,
                         timeout=60).stdout
    assert 'data-loaded="3/3"' in dom
    assert "Test AUC per scenario" in dom


def test_weighted_auc_matches_auc_on_repeated_rows():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300), 2)  # ties
    w = rng.poisson(1.0, (5, 300))
    got = weighted_auc(y, s, w.astype(np.float32))
    import torch

    for b in range(5):
        rows = np.repeat(np.arange(300), w[b])
        assert got[b] == pytest.approx(auc(torch.tensor(y[rows]), torch.tensor(s[rows])), abs=1e-12)


def test_paired_bootstrap_flags_a_real_gain_and_not_a_tie():
    rng = np.random.default_rng(1)
    n = 2000
    scenario = rng.integers(0, 2, n)
    truth = rng.random(n)
    y = (rng.random(n) < truth).astype(np.int8)
    good, bad = truth, np.clip(truth + rng.normal(0, 0.6, n), 0, 1)

    def diff(a, b):
        ra = replicate_metrics(y, a, scenario, ["a", "b"], 300, seed=7)
        rb = replicate_metrics(y, b, scenario, ["a", "b"], 300, seed=7)
        obs = weighted_auc(y, a, np.ones((1, n)))[0] - weighted_auc(y, b, np.ones((1, n)))[0]
        return paired_difference([obs], [ra["auc"]["overall"] - rb["auc"]["overall"]], higher_is_better=True)

    gain = diff(good, bad)
    assert gain.delta > 0 and gain.significant and gain.low > 0 and gain.wins == 1
    tie = diff(good, good)
    assert tie.delta == 0 and not tie.significant


def test_spec_errors_name_the_key_and_the_model(tmp_path):
    with pytest.raises(MsrecError, match="unknown key `seed`"):
        resolve_grid({**SPEC, "seed": 3})
    with pytest.raises(MsrecError, match="unknown model `nope`"):
        resolve_grid({**SPEC, "models": ["dnn", "nope"]})
    with pytest.raises(MsrecError, match="`dnn` appears twice"):
        resolve_grid({**SPEC, "models": ["dnn", {"name": "dnn", "options": SMALL}]})
    with pytest.raises(MsrecError, match="unknown option `widht`"):
        resolve_grid({**SPEC, "models": [{"name": "dnn", "options": {"widht": 3}}]})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "train": {"epochs": 0}}))
    with pytest.raises(MsrecError, match=r"spec.yaml: `train.epochs`"):
        resolve_grid(path)
    path.write_text(yaml.safe_dump({**SPEC, "models": ["dnn", {"name": "separate", "train": {"lr": -1}}]}))
    with pytest.raises(MsrecError, match=r"spec.yaml \(model separate, seed 2022\): `train.lr`"):
        resolve_grid(path)


def test_grid_seeds_and_split_policy():
    grid = resolve_grid({**SPEC, "models": "all"})
    from msrec.models import list_models

    assert grid.labels == [e.name for e in list_models()]
    assert grid.seeds == [2022, 2023]
    assert {c.data.split_seed for c in grid.configs.values()} == {2022}  # one split for every seed
    resplit = resolve_grid({**SPEC, "resplit": True})
    assert {rid: c.data.split_seed for rid, c in resplit.configs.items()} == {
        rid: c.train.seed for rid, c in resplit.configs.items()}


def test_resume_refuses_a_folder_of_another_spec(full):
    changed = {**SPEC, "train": {**SPEC["train"], "lr": 0.02}}
    with pytest.raises(MsrecError, match="stored by a different spec"):
        run_benchmark(changed, out=full.out, console=quiet())


def test_cli_benchmark_resumes_and_writes_markdown_copy(full, tmp_path):
    from typer.testing import CliRunner

    from msrec.cli import app

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    shutil.copytree(full.out / "runs", out / "runs")
    md = tmp_path / "results" / "tiny.md"
    res = CliRunner().invoke(app, ["benchmark", str(spec), "--out", str(out), "--md", str(md)])
    assert res.exit_code == 0, res.output
    assert "4 already in" in res.output and "oracle" in res.output
    assert "![auc.png](tiny-auc.png)" in md.read_text() and (md.parent / "tiny-auc.png").is_file()
    assert (out / "results.csv").read_text() == (full.out / "results.csv").read_text()


def test_demo_prints_the_tables_and_the_reading_and_writes_the_report(tmp_path):
    """The reading names the smallest scenario's winner, its difference from dnn with its interval, and the
    gap to the oracle, computed from the runs whatever they are; it heads report.md and report.html too."""
    from msrec.bench.demo import run_demo

    console = quiet()
    result = run_demo(rows=3000, epochs=2, models=["dnn", "separate", "star"], out=tmp_path / "demo",
                      console=console)
    text = console.file.getvalue()
    assert "Test AUC per scenario" in text and "oracle" in text and "separate" in text and result.ran == 3

    test = {r.label: r.block("click")["scenarios"] for r in result.records}
    smallest = min(test["dnn"], key=lambda s: test["dnn"][s]["rows"])
    auc = {label: scenarios[smallest]["auc"] for label, scenarios in test.items()}
    winner = max(auc, key=auc.get)
    gap = test["dnn"][smallest]["oracle_auc"] - auc[winner]
    [reading] = result.summary.reading
    assert f"smallest scenario, {smallest} ({test['dnn'][smallest]['rows']:,} rows), {winner} has the highest " \
           f"test AUC, {auc[winner]:.4f}" in reading
    other = winner if winner != "dnn" else max(("separate", "star"), key=auc.get)
    assert f"{auc[other] - auc['dnn']:+.4f}" in reading and "against" in reading
    assert re.search(r"\(95% interval \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\], (not )?significant\)", reading)
    assert f"the oracle reaches {test['dnn'][smallest]['oracle_auc']:.4f} there, {gap:.4f} above {winner}" in reading
    share = (auc[winner] - 0.5) / (test["dnn"][smallest]["oracle_auc"] - 0.5)
    assert f"above {winner}, which has {share:.0%} of the oracle's lift over 0.5." in reading
    assert reading in " ".join(text.split())
    html = (tmp_path / "demo" / "report.html").read_text()
    md = (tmp_path / "demo" / "report.md").read_text()
    assert html.index("Reading.") < html.index("<h2>") and md.index(reading) < md.index("## ")


def test_demo_models_train_to_early_stopping(tmp_path):
    """The demo's training settings stop every model after its best epoch (checked on a smaller demo: the
    full one takes minutes)."""
    from msrec.bench.demo import DEMO_EPOCHS, run_demo

    result = run_demo(rows=20_000, models=["dnn", "hmoe", "split_merge", "star"], out=tmp_path / "demo",
                      console=quiet())
    for r in result.records:
        train = r.metrics["train"]
        assert train["best_epoch"] < train["epochs"] < DEMO_EPOCHS, (r.label, train["best_epoch"], train["epochs"])


def test_unknown_spec_key_lists_the_allowed_keys():
    with pytest.raises(MsrecError, match=r"unknown key `dataset` \(allowed: title, config, data, train, models, "
                                         r"seeds, resplit, reference, bootstrap, tune\)"):
        resolve_grid({**SPEC, "dataset": "my.yaml"})
    with pytest.raises(MsrecError, match=r"unknown key `models.1.lable` \(allowed: name, label, options, train\)"):
        resolve_grid({**SPEC, "models": ["dnn", {"name": "separate", "lable": "x"}]})


def test_docs_list_every_spec_key_as_the_spec_documents_it():
    from msrec.bench.spec import spec_reference

    docs = (Path(__file__).resolve().parents[1] / "docs" / "benchmark.md").read_text()
    section = docs.split("<!-- spec keys -->\n", 1)[1].split("<!-- end spec keys -->", 1)[0]
    tables = [t for t in spec_reference().split("\n\n") if t]
    assert [t.strip() for t in section.split("\n\n") if t.startswith("| key")] == [t.strip() for t in tables]


def test_old_single_task_records_load_in_the_tasks_form(full, tmp_path):
    """Records stored before metrics had one shape (one task: the split block itself) still report."""
    shutil.copytree(full.out / "runs", tmp_path / "runs")
    for r in full.records:
        path = tmp_path / "runs" / f"{r.id}.json"
        raw = json.loads(path.read_text())
        raw["metrics"].pop("format", None)  # msrec 0.1 wrote none
        raw["metrics"].update({split: r.metrics[split]["tasks"]["click"] for split in ("val", "test")})
        path.write_text(json.dumps(raw))
    records, _ = RunStore(tmp_path).collect(full.grid)
    assert [r.block("click") for r in records] == [r.block("click") for r in full.records]
    assert records[0].metrics["test"]["macro_auc"] == full.records[0].metrics["test"]["macro_auc"]


def test_training_table_shows_short_runs_with_three_significant_digits(full):
    from msrec.report.tables import training_table

    short = [dataclasses.replace(r, wall_seconds=0.0734, cpu_seconds=0.0912,
                                 metrics={**r.metrics, "train": {**r.metrics["train"], "seconds": 0.0421}})
             for r in full.records]
    row = training_table(full.grid, short, [])
    cells = [c.text for c in row.rows[0]]
    assert cells[row.header.index("train s")] == "0.0421"
    assert cells[row.header.index("run s")] == "0.0734"
    assert cells[row.header.index("run CPU s")] == "0.0912"


def test_train_and_benchmark_print_the_same_per_scenario_table(full):
    """`msrec train` / `evaluate` and the benchmark build the per-scenario table by one function."""
    from rich.console import Console

    from msrec.report.tables import metric_table, rich_table, scenario_table

    one_seed = [r for r in full.records if r.seed == 2022]
    grid = dataclasses.replace(full.grid, seeds=[2022])

    def text(table):
        console = Console(file=io.StringIO(), width=200)
        console.print(table)
        return console.file.getvalue()

    bench = metric_table(grid, one_seed, "click", "auc", multi_task=False)
    bench.title = "AUC"
    train = scenario_table({r.label: r.metrics["test"] for r in one_seed}, "AUC")
    assert text(train) == text(rich_table(bench))
