"""`msrec tune`: an Optuna study over one model's config, resumable, with any number of workers on one storage.

- TPE sampling; pruning (median rule) on the validation metric the trainer computes after every epoch;
- trial 0 is the base config itself (enqueued when the study is created), so the best trial is never worse
  than the default on validation;
- the study lives in an Optuna RDB storage (default `sqlite:///OUT/study.db`): running the same command again
  continues it and runs only the missing trials; several processes (or machines, with a server database) on
  one storage share the trials: Optuna hands each waiting or new trial to one worker. A worker killed mid-trial
  stops its heartbeat; its trial is failed and retried with the same parameters by the next worker after
  `GRACE_SECONDS`;
- each worker writes the outputs when it stops (`outputs.write_outputs`): best.yaml, trials.csv / .md, plots.

Optuna is imported here only (the `tune` extra); importing msrec does not need it.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from msrec.api import prepare_data
from msrec.api import train as train_run
from msrec.config import Config, apply_overrides, parse_config, read_yaml, resolve_data_paths
from msrec.data.prepare import EncodedData
from msrec.errors import MsrecError
from msrec.runs import absolute_data_paths
from msrec.train.metrics import monitor_value
from msrec.tune.settings import TuneSettings, parse_settings
from msrec.tune.space import Param, apply, base_config, base_point, resolve_space, suggest

HEARTBEAT_SECONDS = 10  # a running trial's heartbeat in the storage
GRACE_SECONDS = 60  # a trial without a heartbeat for this long was killed: failed, then retried
POLL_SECONDS = 2  # a worker with no trial left to start waits this long for the others' trials


def load_tune_config(path: str | Path, overrides: list[str] | None = None) -> tuple[Config, TuneSettings]:
    """A run config with an optional `tune:` section (`--set` reaches both)."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path, "config file"), overrides or [])
    if not isinstance(raw, dict):
        raise MsrecError(f"{path}: expected a mapping with data/model/train (and tune) sections")
    settings = parse_settings(raw.pop("tune", None), str(path))
    if isinstance(raw.get("data"), dict):
        raw["data"] = resolve_data_paths(raw["data"], path.parent)
    return parse_config(raw, str(path)), settings


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MsrecError("msrec tune needs Optuna: pip install 'msrec[tune]' (or optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


@dataclass
class TuneResult:
    out: Path
    study: str
    storage: str
    best_config: Config
    best_value: float
    best_number: int
    default_value: float  # trial 0's (nan when it did not finish)
    monitor: str
    finished: int  # trials finished in the study (complete, pruned or failed by an error)
    ran: list[int] = field(default_factory=list)  # numbers of the trials this call ran
    kept: dict[int, Kept] = field(default_factory=dict, repr=False)  # with `keep`: this call's complete trials


@dataclass
class Kept:
    """A complete trial's training run (with `tune(keep=True)`): a benchmark stores the runs of trial 0 and of the
    best trial as its grid runs of the same config and seed instead of training them again."""

    config: Config
    result: Any  # msrec.api.TrainResult, its model dropped
    wall_seconds: float
    cpu_seconds: float


def _storage(optuna: Any, url: str) -> Any:
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(
        url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))


def open_study(optuna: Any, storage: str, name: str, fingerprint: str, first: dict[str, Any]) -> Any:
    """Create the study with trial 0 (the base config) enqueued, or load it. Only the creator enqueues, and the
    others wait until it has (so trial 0 is the default whoever starts first); a study of another config or
    space under the same name is refused rather than mixed in."""
    for attempt in range(5):  # workers starting together on a new SQLite file may race to create its tables
        try:
            store = _storage(optuna, storage)
            break
        except Exception:  # sqlalchemy's or Optuna's error: retried, then raised
            if attempt == 4:
                raise
            time.sleep(1 + attempt)
    try:
        study = optuna.create_study(storage=store, study_name=name, direction="maximize")
        study.enqueue_trial(first, user_attrs={"default": True})
        study.set_user_attr("fingerprint", fingerprint)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=store, study_name=name)
        deadline = time.monotonic() + 60
        while "fingerprint" not in study.user_attrs and time.monotonic() < deadline:
            time.sleep(0.5)
        if study.user_attrs.get("fingerprint", fingerprint) != fingerprint:
            raise MsrecError(f"study `{name}` in {storage} was started with another config or search space; "
                             "use another --out (or --storage, or tune.study)") from None
    return study


def counts(optuna: Any, study: Any) -> tuple[int, int]:
    """(finished, running): trials complete, pruned or failed by an error (budget spent), and those running."""
    finished = running = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) or \
                t.state == optuna.trial.TrialState.FAIL and "error" in t.user_attrs:
            finished += 1
        elif t.state == optuna.trial.TrialState.RUNNING:
            running += 1
    return finished, running


class Objective:
    """One trial: draw a point, train it (pruned per epoch), return the best epoch's validation monitor."""

    def __init__(self, optuna: Any, base: dict, params: list[Param], data: EncodedData, settings: TuneSettings,
                 console: Console, keep: bool = False):
        self.optuna, self.base, self.params, self.data = optuna, base, params, data
        self.settings, self.console, self.keep = settings, console, keep
        self.kept: dict[int, Kept] = {}
        self.monitor = base["train"].get("monitor", "macro_auc")
        self.ran: list[int] = []  # the trials this worker ran

    def _pruning(self, trial: Any):
        def hook(row: dict, report: dict) -> None:
            value = monitor_value(report, self.monitor)
            if not math.isnan(value):
                trial.report(value, row["epoch"])
            if self.settings.pruning and trial.should_prune():
                trial.set_user_attr("epochs", row["epoch"])
                raise self.optuna.TrialPruned(f"pruned after epoch {row['epoch']}")
        return hook

    def __call__(self, trial: Any) -> float:
        values = suggest(trial, self.params)
        self.ran.append(trial.number)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            cfg = parse_config(apply(self.base, {**values, "train.progress": False}), f"trial {trial.number}")
            result = train_run(cfg, save=False, data=self.data, console=Console(quiet=True),
                               epoch_hooks=[self._pruning(trial)])
        except MsrecError as err:
            trial.set_user_attr("error", " ".join(str(err).split()))
            self.console.print(f"  trial {trial.number}: failed: {err}", highlight=False, soft_wrap=True)
            raise
        except self.optuna.TrialPruned:
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            self.console.print(f"  trial {trial.number}: pruned after epoch {trial.user_attrs.get('epochs')}",
                               highlight=False)
            raise
        val, fit = result.metrics["val"], result.metrics["train"]
        for key, value in (("seconds", time.perf_counter() - t0), ("epochs", fit["epochs"]),
                           ("best_epoch", fit["best_epoch"]), ("val_macro_auc", val["macro_auc"]),
                           ("val_auc", val["overall"]["auc"]), ("val_logloss", val["overall"]["logloss"])):
            trial.set_user_attr(key, value)
        value = monitor_value(val, self.monitor)
        if self.keep:
            result.model = None
            self.kept[trial.number] = Kept(cfg, result, time.perf_counter() - t0, time.process_time() - c0)
        self.console.print(f"  trial {trial.number}: val {self.monitor} {value:.4f}  "
                           f"({time.perf_counter() - t0:.0f} s)", highlight=False)
        return value


def tune(config: Config | dict | str | Path, out: str | Path, trials: int | None = None, storage: str | None = None,
         overrides: list[str] | None = None, settings: TuneSettings | None = None, console: Console | None = None,
         data: EncodedData | None = None, name: str | None = None, keep: bool = False) -> TuneResult:
    """Run (or continue) the study of `config` until it holds `trials` finished trials; write its outputs to `out`.

    `config`: a run config file (with an optional `tune:` section), a dict or a `Config`; `settings` replaces
    the file's `tune:` section; `storage`: an Optuna RDB URL (default `sqlite:///OUT/study.db`); `data`: the
    data already prepared from the config; `name`: the study's name when `tune.study` does not give one; `keep`:
    return the training runs of the complete trials this call ran (`TuneResult.kept`).
    """
    from msrec.tune.outputs import write_outputs

    optuna = import_optuna()
    console = console or Console(stderr=True)
    if isinstance(config, str | Path):
        cfg, from_file = load_tune_config(config, overrides)
        settings = settings or from_file
    else:
        from msrec.api import as_config

        cfg = as_config(config, overrides)
    settings = settings or TuneSettings()
    trials = trials or settings.trials
    if not trials:
        raise MsrecError("tune: how many trials? (--trials N, or tune.trials in the config)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study_name = settings.study or name or cfg.model.name
    cfg = absolute_data_paths(cfg)
    params = resolve_space(cfg, settings.space)
    base = base_config(cfg)
    fingerprint = json.dumps({"config": base, "space": [vars(p) for p in params]}, sort_keys=True, default=str)
    study = open_study(optuna, storage, study_name, fingerprint, base_point(cfg, params))
    seed = settings.seed if settings.seed is not None else cfg.train.seed
    startup = settings.startup_trials if settings.startup_trials is not None else min(10, max(2, trials // 4))
    objective = None
    while True:
        optuna.storages.fail_stale_trials(study)  # a killed worker's trial: failed, its parameters enqueued again
        finished, running = counts(optuna, study)
        if finished >= trials:
            break
        if finished + running >= trials:  # the rest are running in other workers
            time.sleep(POLL_SECONDS)
            continue
        if objective is None:
            console.print(f"[bold]tune {study_name}[/bold]: {finished} of {trials} trials done in {storage}",
                          highlight=False, soft_wrap=True)
            objective = Objective(optuna, base, params, data or prepare_data(cfg), settings, console, keep)
        # reseeded per trial: a resumed or a single-worker study draws the same points; concurrent workers
        # (trials running elsewhere) mix in their process id so that they do not draw the same point
        trial_seed = seed + 7919 * len(study.get_trials(deepcopy=False)) + (os.getpid() if running else 0)
        study.sampler = optuna.samplers.TPESampler(seed=trial_seed % 2**32, n_startup_trials=startup)
        study.pruner = optuna.pruners.MedianPruner(n_startup_trials=max(2, startup // 2), n_warmup_steps=1)
        study.optimize(objective, n_trials=1, catch=(MsrecError,), gc_after_trial=False)
    result = write_outputs(optuna, study, cfg, params, out, storage, objective.ran if objective else [])
    result.kept = objective.kept if objective else {}
    return result
