"""A study's outputs in its folder: `best.yaml` (a normal run config: `msrec train best.yaml`), `trials.csv`,
`trials.md` and `plots/` (optimisation history, parameter importances).

Every worker writes them when it stops, each file written beside its target and renamed into place, so the
folder always holds one worker's complete view (the last one's holds every trial).
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from msrec.config import Config, parse_config
from msrec.errors import MsrecError
from msrec.tune.space import Param, apply, base_config, encode, params_of

if TYPE_CHECKING:
    from msrec.tune.study import TuneResult

COLUMNS = ("number", "state", "value", "default", "epochs", "best_epoch", "seconds", "val_macro_auc", "val_auc",
           "val_logloss")


def _write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def trial_rows(study: Any, params: list[Param]) -> list[dict[str, Any]]:
    """One row per trial: its state, value, training figures and parameters (as config values)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row = {"number": t.number, "state": t.state.name.lower(), "value": t.value if t.value is not None else math.nan,
               "default": bool(attrs.get("default")), **{k: attrs.get(k, math.nan) for k in COLUMNS[4:]}}
        row.update({k: encode(v) if isinstance(v, list) else v for k, v in params_of(t.params, params).items()})
        row["error"] = attrs.get("error", "")
        rows.append(row)
    return rows


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}" if abs(v) < 1e-3 and v else f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def history_plot(rows: list[dict], monitor: str) -> bytes:
    """Each trial's validation value (pruned trials at their last reported epoch's value are not shown), the best
    so far, and trial 0 (the default) as a dashed line."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    done = [r for r in rows if r["state"] == "complete"]
    ax.plot([r["number"] for r in done], [r["value"] for r in done], "o", color="#4a78a8", label="trial")
    best, xs, ys = -math.inf, [], []
    for r in sorted(done, key=lambda r: r["number"]):
        best = max(best, r["value"])
        xs.append(r["number"])
        ys.append(best)
    ax.step(xs, ys, where="post", color="#c0504d", label="best so far")
    default = next((r["value"] for r in done if r["default"]), None)
    if default is not None:
        ax.axhline(default, color="#777", linestyle="--", linewidth=1, label="default (trial 0)")
    pruned = [r["number"] for r in rows if r["state"] == "pruned"]
    if pruned and ys:
        ax.plot(pruned, [min(ys)] * len(pruned), "x", color="#999", label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {monitor}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.set_title("Optimisation history")
    return _png(fig)


def importance_plot(importances: dict[str, float]) -> bytes:
    fig = Figure(figsize=(6.4, 0.4 * len(importances) + 1.2))
    ax = fig.subplots()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="#4a78a8")
    ax.set_xlabel("importance (PED-ANOVA, Optuna's default evaluator; sums to 1)")
    ax.set_title("Parameter importances")
    return _png(fig)


def _importances(optuna: Any, study: Any, complete: int) -> dict[str, float]:
    """Each parameter's importance for the validation value over the complete trials (Optuna's default evaluator,
    PED-ANOVA); empty when there are too few trials to say (fewer than 4)."""
    if complete < 4:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}


def best_config(cfg: Config, params: list[Param], values: dict[str, Any]) -> Config:
    return parse_config(apply(base_config(cfg), params_of(values, params)), "best trial")


def write_outputs(optuna: Any, study: Any, cfg: Config, params: list[Param], out: Path, storage: str,
                  ran: list[int]) -> TuneResult:
    from msrec.tune.study import TuneResult, counts

    rows = trial_rows(study, params)
    complete = [r for r in rows if r["state"] == "complete"]
    if not complete:
        raise MsrecError(f"study `{study.study_name}`: no trial finished (see {out / 'trials.csv'})")
    best = study.best_trial
    monitor = cfg.train.monitor
    default = next((r["value"] for r in complete if r["default"]), math.nan)
    tuned = best_config(cfg, params, best.params)
    header = (f"# msrec tune: study `{study.study_name}` ({storage}), best of {len(complete)} complete trials: "
              f"trial {best.number},\n# validation {monitor} {best.value:.4f} (trial 0, the default config: "
              f"{_cell(default)}). Train it with `msrec train best.yaml`.\n")
    _write(out / "best.yaml", header + yaml.safe_dump(tuned.to_dict(), sort_keys=False))
    keys = [p.key for p in params]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*COLUMNS, *keys, "error"])
    for r in rows:
        writer.writerow([r.get(k, "") for k in (*COLUMNS, *keys, "error")])
    _write(out / "trials.csv", buf.getvalue())
    (out / "plots").mkdir(exist_ok=True)
    _write(out / "plots" / "history.png", history_plot(rows, monitor))
    importances = _importances(optuna, study, len(complete))
    if importances:
        _write(out / "plots" / "importance.png", importance_plot(importances))
    _write(out / "trials.md", trials_markdown(study.study_name, rows, params, best.number, monitor, importances))
    return TuneResult(out, study.study_name, storage, tuned, best.value, best.number, default, monitor,
                      counts(optuna, study)[0], ran)


def trials_markdown(name: str, rows: list[dict], params: list[Param], best: int, monitor: str,
                    importances: dict[str, float]) -> str:
    states = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")}
    lines = [f"# Tuning: {name}", "",
             (f"{len(rows)} trials: {states['complete']} complete, {states['pruned']} pruned, {states['fail']} failed. "
             f"value: the best epoch's validation {monitor} (logloss: negated, higher is better); trial 0 is the "
             f"default config; bold: the best trial (best.yaml)."), "", "Search space:", ""]
    lines += [f"- `{p.key}`: {p.describe()}" + (f" (importance {importances[p.key]:.2f})" if p.key in importances
                                                 else "") for p in params]
    keys = [p.key for p in params]
    header = ["trial", "state", "value", "epochs", "s", *[k.split(".", 1)[1] for k in keys]]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for r in rows:
        cells = [str(r["number"]) + (" (default)" if r["default"] else ""), r["state"], _cell(r["value"]),
                 _cell(r["epochs"]), _cell(r["seconds"]), *[_cell(r.get(k, "")) for k in keys]]
        if r["number"] == best:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "![history](plots/history.png)", ""] + (["![importance](plots/importance.png)", ""]
                                                          if importances else [])
    return "\n".join(lines)
