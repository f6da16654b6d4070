"""A benchmark's plots as PNG bytes: per-scenario AUC bars, per-scenario AUC and difference from the reference
against scenario size, and validation curves.

matplotlib's Agg canvas is used directly (no pyplot, no global backend), so plotting never touches a
display or another caller's figures.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from msrec.report.cells import WIDE, by_label, value
from msrec.report.stats import Difference, mean_std

if TYPE_CHECKING:
    from msrec.bench.spec import Grid
    from msrec.bench.store import RunRecord


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def auc_plot(grid: Grid, records: list[RunRecord], tasks: list[str]) -> bytes:
    """Per-scenario (and macro) test AUC per model: mean with std error bars; the oracle as dashed ticks. With
    more than `WIDE` scenarios, the bars are overall, macro and weighted macro only (`size_plot` has each one)."""
    many = len(records[0].scenarios) > WIDE
    columns = ["overall", "macro", "weighted_macro"] if many else [*records[0].scenarios, "macro"]
    runs = by_label(grid.labels, records)
    fig = Figure(figsize=(max(6.0, 0.22 * len(runs) * len(columns) + 2), 3.6 * len(tasks)))
    axes = fig.subplots(len(tasks), 1, squeeze=False)[:, 0]
    width = 0.8 / max(1, len(runs))
    for ax, task in zip(axes, tasks):
        lows, highs = [], []
        for i, (label, model_runs) in enumerate(runs.items()):
            stats = [mean_std([value(r.block(task), c, "auc") for r in model_runs]) for c in columns]
            means = np.array([m for m, _ in stats])
            sds = np.nan_to_num(np.array([s for _, s in stats]))
            x = np.arange(len(columns)) - 0.4 + width * (i + 0.5)
            ax.bar(x, means, width, yerr=sds, capsize=2, color=f"C{i % 10}", label=label)
            lows.append(np.nanmin(means - sds))
            highs.append(np.nanmax(means + sds))
        if "oracle_auc" in records[0].block(task)["overall"]:
            oracle = [mean_std([value(r.block(task), c, "oracle_auc") for r in records])[0] for c in columns]
            ax.hlines(oracle, np.arange(len(columns)) - 0.45, np.arange(len(columns)) + 0.45, colors="black",
                      linestyles="dashed", label="oracle")
            highs.append(np.nanmax(oracle))
        lo, hi = np.nanmin(lows), np.nanmax(highs)
        ax.set_ylim(max(0.0, lo - 0.1 * (hi - lo) - 0.005), min(1.0, hi + 0.05 * (hi - lo) + 0.005))
        ax.set_xticks(np.arange(len(columns)), columns)
        ax.set_ylabel("test AUC" + (f" ({task})" if len(tasks) > 1 else ""))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title(f"{grid.title}: test AUC per scenario (mean ± std over seeds)")
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def curves_plot(grid: Grid, records: list[RunRecord]) -> bytes:
    """Validation macro AUC and logloss per epoch, mean over seeds (seeds that stopped early drop out)."""
    fig = Figure(figsize=(10, 3.6))
    ax_auc, ax_loss = fig.subplots(1, 2)
    for i, (label, runs) in enumerate(by_label(grid.labels, records).items()):
        for ax, key in ((ax_auc, "val_macro_auc"), (ax_loss, "val_logloss")):
            per_epoch: dict[int, list[float]] = {}
            for r in runs:
                for h in r.metrics["train"]["history"]:
                    per_epoch.setdefault(h["epoch"], []).append(h[key])
            epochs = sorted(per_epoch)
            stats = [mean_std(per_epoch[e]) for e in epochs]
            means = np.array([m for m, _ in stats])
            ax.plot(epochs, means, marker="o", ms=3, color=f"C{i % 10}", label=label)
            sds = np.array([s for _, s in stats])
            if np.isfinite(sds).any():
                ax.fill_between(epochs, means - np.nan_to_num(sds), means + np.nan_to_num(sds),
                                color=f"C{i % 10}", alpha=0.12)
    ax_auc.set_title("validation macro AUC")
    ax_loss.set_title("validation logloss")
    for ax in (ax_auc, ax_loss):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def size_plot(grid: Grid, records: list[RunRecord], task: str, diffs: dict[str, dict[str, Difference]]) -> bytes:
    """Each scenario's test AUC (mean over seeds) against its test rows (log scale), a point per model and
    scenario; beside it, each model's difference from the reference with its 95% interval (`diffs`, when the
    grid has the reference). Readable for 3 scenarios or 1,000: where the small ones fall is the question."""
    block = records[0].block(task)
    names = list(block["scenarios"])
    rows = np.array([block["scenarios"][n]["rows"] for n in names], dtype=float)
    runs = by_label(grid.labels, records)
    panels = 2 if diffs else 1
    fig = Figure(figsize=(5.2 * panels + 0.6, 3.8))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    size = max(4.0, 40.0 / np.sqrt(max(1, len(names) / 10)))
    for i, (label, model_runs) in enumerate(runs.items()):
        aucs = np.array([mean_std([value(r.block(task), n, "auc") for r in model_runs])[0] for n in names])
        axes[0].scatter(rows, aucs, s=size, alpha=0.7, color=f"C{i % 10}", label=label, linewidths=0)
    axes[0].set_ylabel("test AUC" + (f" ({task})" if len(records[0].tasks) > 1 else ""))
    axes[0].set_title("per-scenario test AUC (mean over seeds)", fontsize=9)
    if diffs:
        ref = grid.spec.reference
        offsets = np.linspace(-0.06, 0.06, len(diffs)) if len(diffs) > 1 else [0.0]
        for i, (label, per_column) in enumerate(diffs.items()):
            d = [per_column[n] for n in names]
            delta = np.array([x.delta for x in d])
            low, high = np.array([x.low for x in d]), np.array([x.high for x in d])
            x = rows * 10 ** offsets[i]  # a small shift per model, so that intervals do not overlap
            color = f"C{list(runs).index(label) % 10}"
            axes[1].errorbar(x, delta, yerr=np.nan_to_num(np.abs(np.stack([delta - low, high - delta]))), fmt="o",
                             ms=np.sqrt(size), alpha=0.7, color=color, elinewidth=0.6, label=label)
        axes[1].axhline(0.0, color="black", lw=0.8)
        axes[1].set_ylabel(f"test AUC - {ref}")
        axes[1].set_title(f"difference from {ref} (95% interval)", fontsize=9)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("scenario test rows (log scale)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best", frameon=False)  # every model (the right panel lacks the reference)
    fig.suptitle(f"{grid.title}: per-scenario results against scenario size", fontsize=10)
    return _png(fig)
