"""`msrec tune`: trial 0 is the config as given, a resumed study runs only the missing trials, two workers on one
SQLite storage never run the same trial, best.yaml trains to the best trial's validation value, the search space
(defaults, overrides, widening, refusals), pruning, and a benchmark spec's `tune:` (default vs tuned)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from rich.console import Console

from msrec import api
from msrec.config import parse_config
from msrec.errors import MsrecError
from msrec.train.metrics import monitor_value
from msrec.tune import study as tune_study
from msrec.tune.settings import TuneSettings
from msrec.tune.space import base_point, resolve_space
from msrec.tune.study import tune

TINY = {"data": {"dataset": "synthetic", "options": {"rows": 1200, "users": 150, "items": 80}},
        "model": {"name": "dnn", "embed_dim": 4, "mlp": {"hidden": [16]}},
        "train": {"epochs": 2, "batch_size": 256, "threads": 1, "progress": False, "seed": 3}}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def write_config(folder: Path, **tune_keys) -> Path:
    path = folder / "tune.yaml"
    path.write_text(yaml.safe_dump({**TINY, "tune": tune_keys} if tune_keys else TINY))
    return path


def trials_of(out: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="dnn", storage=f"sqlite:///{(out / 'study.db').resolve()}").get_trials()


@pytest.fixture(scope="module")
def study3(tmp_path_factory):
    """A study of three trials, then continued to five."""
    folder = tmp_path_factory.mktemp("tune")
    first = tune(write_config(folder, trials=3), folder / "out", console=quiet())
    second = tune(write_config(folder, trials=3), folder / "out", trials=5, console=quiet())
    return folder, first, second


def test_trial_0_is_the_config_as_given_and_the_best_is_never_worse(study3):
    folder, first, _ = study3
    trials = trials_of(folder / "out")
    cfg = parse_config(TINY)
    assert trials[0].user_attrs["default"] and trials[0].params == base_point(cfg, resolve_space(cfg))
    alone = api.train(cfg, save=False, console=quiet())  # the same config trained on its own
    assert trials[0].value == monitor_value(alone.metrics["val"], "macro_auc")
    assert first.default_value == trials[0].value and first.best_value >= first.default_value


def test_a_resumed_study_runs_only_the_missing_trials(study3, tmp_path):
    folder, first, second = study3
    assert first.ran == [0, 1, 2] and second.ran == [3, 4] and second.finished == 5
    again = tune(write_config(folder, trials=3), folder / "out", trials=5, console=quiet())
    assert again.ran == [] and again.best_number == second.best_number
    rows = (folder / "out" / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 and rows[0].startswith("number,state,value")


def test_an_interrupted_study_resumes_with_the_missing_trials(tmp_path, monkeypatch):
    calls = []
    real = tune_study.train_run

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the second trial
        return real(*args, **kwargs)

    monkeypatch.setattr(tune_study, "train_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune(write_config(tmp_path), tmp_path / "out", trials=3, console=quiet())
    monkeypatch.setattr(tune_study, "train_run", real)
    result = tune(write_config(tmp_path), tmp_path / "out", trials=3, console=quiet())
    states = [t.state.name for t in trials_of(tmp_path / "out")]
    assert states[:2] == ["COMPLETE", "FAIL"] and set(states[2:]) <= {"COMPLETE", "PRUNED"} and result.ran == [2, 3]


WORKER = textwrap.dedent("""
    import io, json, sys, time
    from pathlib import Path
    from rich.console import Console
    from msrec.tune.study import tune
    out = Path(sys.argv[2])
    out.mkdir()
    while len(list(out.parent.glob("w*"))) < 2:  # both imported: they start together
        time.sleep(0.1)
    result = tune(sys.argv[1], out, storage=sys.argv[3], console=Console(file=io.StringIO()))
    print(json.dumps(result.ran))
""")


def test_two_workers_on_one_sqlite_storage_never_run_the_same_trial(tmp_path):
    config = write_config(tmp_path, trials=4)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(config), str(tmp_path / f"w{k}"), storage],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    ran = []
    for w in workers:
        stdout, stderr = w.communicate(timeout=600)
        assert w.returncode == 0, stderr[-3000:]
        ran.append(json.loads(stdout.strip().splitlines()[-1]))
    trials = optuna.load_study(study_name="dnn", storage=storage).get_trials()
    assert not set(ran[0]) & set(ran[1]), ran  # no trial run by both
    assert sorted(ran[0] + ran[1]) == [t.number for t in trials]  # every trial run by one of them
    assert ran[0] and ran[1] and len(trials) >= 4 and sum(t.user_attrs.get("default", False) for t in trials) == 1
    assert all(t.state.name == "COMPLETE" or t.state.name == "PRUNED" for t in trials)


def test_best_yaml_trains_to_the_best_trials_validation_value(study3, tmp_path):
    folder, _, second = study3
    best = folder / "out" / "best.yaml"
    result = api.train(best, out=tmp_path / "run", console=quiet())
    assert monitor_value(result.metrics["val"], "macro_auc") == second.best_value
    text = best.read_text()
    assert text.startswith("# msrec tune") and "tune" not in yaml.safe_load(text)
    assert (folder / "out" / "plots" / "history.png").stat().st_size > 0
    assert "| trial |" in (folder / "out" / "trials.md").read_text()


def test_the_cli_tunes_and_continues(tmp_path, cli):
    config = write_config(tmp_path)
    first = cli("tune", config, "--trials", "2", "--out", tmp_path / "out", "--set", "train.epochs=1")
    assert first.code == 0, first.stderr
    assert "best: trial" in first.stdout and (tmp_path / "out" / "best.yaml").is_file()
    again = cli("tune", config, "--trials", "2", "--out", tmp_path / "out", "--set", "train.epochs=2")
    assert again.code == 1 and "another config" in again.stderr


def test_search_space_defaults_overrides_and_widening():
    cfg = parse_config({**TINY, "model": {"name": "mmoe", "embed_dim": 12, "mlp": {"hidden": [16]}}})
    params = {p.key: p for p in resolve_space(cfg, {"model.experts": None, "train.weight_decay":
                                                     {"low": 0.0, "high": 0.001}})}
    assert "model.experts" not in params and "model.tower.hidden" in params  # mmoe's own key kept
    assert params["train.weight_decay"].low == 0.0
    assert 12 in params["model.embed_dim"].choices and [16] in params["model.mlp.hidden"].choices  # widened
    lr = params["train.lr"]
    assert lr.log and lr.low <= cfg.train.lr <= lr.high
    point = base_point(cfg, list(params.values()))
    assert point["model.mlp.hidden"] == "[16]" and point["model.embed_dim"] == 12


@pytest.mark.parametrize(("space", "message"), [
    ({"data.min_freq": {"low": 1, "high": 3}}, "cannot be searched"),
    ({"model.nope": {"choices": [1, 2]}}, "not a key of model dnn"),
    ({"train.lr": {"low": 0.1, "high": 0.01}}, "low <= high"),
    ({"train.lr": {"choices": []}}, "non-empty list"),
    ({"train.lr": {"low": 0, "high": 1, "log": True}}, "log range"),
])
def test_bad_search_space_is_a_clear_error(space, message):
    with pytest.raises(MsrecError, match=message):
        resolve_space(parse_config(TINY), space)


def test_pruning_stops_a_trial_after_the_epoch_the_pruner_rejects():
    class Trial:  # the part of optuna.Trial the hook uses
        number, reported, user_attrs = 0, [], {}

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return True

        def set_user_attr(self, key, value):
            self.user_attrs[key] = value

    objective = tune_study.Objective(optuna, TINY, [], None, TuneSettings(), quiet())
    hook = objective._pruning(Trial())
    with pytest.raises(optuna.TrialPruned):
        hook({"epoch": 1}, {"macro_auc": 0.6, "overall": {"auc": 0.6, "logloss": 0.5}, "tasks": {}})
    off = tune_study.Objective(optuna, TINY, [], None, TuneSettings(pruning=False), quiet())._pruning(Trial())
    off({"epoch": 1}, {"macro_auc": 0.6, "overall": {"auc": 0.6, "logloss": 0.5}, "tasks": {}})  # reported only


def test_without_optuna_tune_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MsrecError, match="msrec\\[tune\\]"):
        tune(write_config(tmp_path), tmp_path / "out", trials=1, console=quiet())


def test_benchmark_spec_tunes_each_model_and_reports_default_vs_tuned(tmp_path):
    from msrec.bench.runner import run_benchmark
    from msrec.bench.store import RunStore

    spec = {"title": "tiny", "data": TINY["data"], "train": {"epochs": 2, "batch_size": 256, "threads": 1},
            "models": [{"name": "dnn", "options": {"embed_dim": 4, "mlp": {"hidden": [16]}}}, "separate"],
            "seeds": 2, "bootstrap": 100, "tune": {"trials": 2}}
    result = run_benchmark(spec, out=tmp_path / "b", console=quiet())
    assert result.grid.labels == ["dnn", "dnn-tuned", "separate", "separate-tuned"] and not result.failures
    best = yaml.safe_load((tmp_path / "b" / "tune" / "dnn" / "best.yaml").read_text())
    tuned = result.grid.configs["dnn-tuned--seed2023"].to_dict()
    assert tuned["train"]["seed"] == 2023 and tuned["model"] == parse_config(best).to_dict()["model"]
    titles = [t.title for t in result.summary.tables]
    assert "Ranking before and after tuning (macro test AUC)" in titles and "Default vs tuned (test AUC)" in titles
    ranking = next(t for t in result.summary.tables if t.title.startswith("Ranking"))
    assert {row[0].text for row in ranking.rows} == {"dnn", "separate"}
    study = optuna.load_study(study_name="dnn", storage=f"sqlite:///{tmp_path / 'b' / 'tune' / 'study.db'}")
    store = RunStore(tmp_path / "b")  # the first seed's runs are the studies' trial 0 and best trial, not retrained
    assert store.load("dnn--seed2022").metrics["val"]["macro_auc"] == study.trials[0].value
    assert store.load("dnn-tuned--seed2022").metrics["val"]["macro_auc"] == study.best_value
    assert result.ran <= 4  # of 8 runs: the second seed's, at most
    again = run_benchmark(spec, out=tmp_path / "b", console=quiet())  # resumed: no trial, no run
    assert again.ran == 0 and again.grid.configs["dnn-tuned--seed2022"] == result.grid.configs["dnn-tuned--seed2022"]
    with pytest.raises(MsrecError, match="resplit"):
        run_benchmark({**spec, "resplit": True}, out=tmp_path / "c", console=quiet())


def test_a_tuned_model_whose_best_trial_is_its_default_is_not_trained_twice(tmp_path):
    from msrec.bench.runner import run_benchmark
    from msrec.bench.store import RunStore

    spec = {"data": TINY["data"], "train": {"epochs": 1, "batch_size": 256, "threads": 1},
            "models": [{"name": "dnn", "options": {"embed_dim": 4, "mlp": {"hidden": [16]}}}], "seeds": 1,
            "bootstrap": 100, "tune": {"trials": 1}}  # one trial: the config as given wins
    result = run_benchmark(spec, out=tmp_path / "b", console=quiet())
    assert result.ran == 0  # dnn is its trial 0; dnn-tuned is the same run
    store = RunStore(tmp_path / "b")
    default, tuned = store.load("dnn--seed2022"), store.load("dnn-tuned--seed2022")
    assert tuned.label == "dnn-tuned" and (tuned.arrays()["scores"] == default.arrays()["scores"]).all()
