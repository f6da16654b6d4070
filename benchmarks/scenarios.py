"""Training speed against the number of scenarios: samples/s per model at S = 3, 10, 100, 1000.

Every model of the zoo trains one epoch (the trainer's optimizer: row-sparse tables, Adam for the dense
weights) over pre-built batches of the synthetic generator with S scenarios whose shares are proportional
to 1 / (k + 1) (`share_zipf: 1`); the rows are the same for every S (same seed: same users, items and
labels' truth up to the scenario effects), only their scenario ids spread over more scenarios. Runs are
interleaved (each repeat runs every model at every S, in a rotated order) and the figures are medians over
repeats; `S=100/S=3` is the median of each repeat's own ratio. `hmoe[top_k=4]` is hmoe's bounded variant.
`--clock cpu` times the process's CPU seconds instead of wall seconds (with `--threads 1`: the work a step does,
much less disturbed than wall time by other processes on a loaded machine); `--scenario-updates dense` trains
the stacked per-scenario parameters with dense Adam (`train.scenario_updates`) for comparison.

`--tiles` instead times one per-scenario tower (forward and backward, one batch) at each S with the tile
size forced: 1 (every row gathers its own scenario's weights), 4 ... 256, the largest scenario's row count
(one padded tile per scenario: sort rows by scenario, one matmul per segment) and the per-batch choice
(`nn.routing.tile_size`); all with the grouped matmul where it applies, and `auto, bmm` the per-batch choice
with a batched matmul of per-tile weights (every layer before the grouped matmul).

`--star-floor` / `--separate-floor` time that model's per-scenario work alone (star: `W_s * W`, its gradients and
their Adam update; separate: its stacked MLPs forward, backward and update) next to each training step, and print
`bound`: the S=100 / S=3 ratio the model would reach if nothing but that work grew with S.

    python benchmarks/scenarios.py [--rows 600000] [--batch-size 4096] [--repeats 3] [--scenarios 3 10 100 1000]
                                   [--models dnn star ...] [--threads 2] [--clock wall|cpu]
                                   [--scenario-updates row_sparse|dense] [--tiles]
                                   [--star-floor | --separate-floor]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from msrec.config import Config
from msrec.data.datasets import synthetic
from msrec.data.encode import Encoder
from msrec.data.prepare import resolve_schema
from msrec.errors import MsrecError
from msrec.models import build_model, list_models
from msrec.nn import routing
from msrec.train.optim import build_optimizer

VARIANTS = {"hmoe[top_k=4]": ("hmoe", {"top_k": 4}),
            "m3oe[top_k=4]": ("m3oe", {"top_k": 4})}
SKIP = {("hmoe", 1000): "S^2 gate weights (128M) and S tower passes per row"}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def data_for(rows: int, scenarios: int, batch_size: int, scenario_updates: str = "row_sparse"):
    """Every generated row encoded for training (no split: a tail scenario's few rows all train)."""
    options = {"rows": rows, "scenarios": scenarios, "share_zipf": 1.0}
    cfg = Config.model_validate({"data": {"dataset": "synthetic", "options": options},
                                 "train": {"batch_size": batch_size, "scenario_updates": scenario_updates}})
    generated = synthetic.SyntheticOptions(**options)
    table = synthetic.generate(generated)
    encoder = Encoder(resolve_schema(cfg.data, synthetic.defaults(generated))).fit(table, "synthetic")
    train = encoder.transform(table, "synthetic")
    batches = list(train.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)))
    return cfg, encoder.spec(), batches


def train_epoch(name: str, options: dict, cfg, spec, batches, clock=time.perf_counter) -> tuple[float, int]:
    """Samples/s of one epoch of training steps, and the model's parameter count."""
    torch.manual_seed(0)
    model = build_model(name, spec, options).train()
    opt = build_optimizer(model, cfg.train)
    t0 = clock()
    n = 0
    for b in batches:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(b)
    return n / (clock() - t0), sum(p.numel() for p in model.parameters())


def models(chosen: list[str] | None) -> dict[str, tuple[str, dict]]:
    names = {e.name: (e.name, {}) for e in list_models()}
    names.update(VARIANTS)
    return {k: v for k, v in names.items() if not chosen or k in chosen or v[0] in chosen}


def zoo(args, sets) -> None:
    todo = models(args.models)
    speed = {(m, S): [] for m in todo for S in args.scenarios}
    params: dict = {}
    failed: dict = {}
    for r in range(args.repeats):
        order = list(args.scenarios)[r % len(args.scenarios):] + list(args.scenarios)[:r % len(args.scenarios)]
        for label, (name, options) in todo.items():
            for S in order:
                if (name, S) in SKIP and not options or (label, S) in failed:
                    continue
                try:
                    sps, count = train_epoch(name, options, *sets[S], clock=CLOCKS[args.clock])
                except (RuntimeError, ValueError, MemoryError, MsrecError) as err:  # cannot run at this S: say why
                    failed[(label, S)] = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
                    continue
                speed[(label, S)].append(sps)
                params[(label, S)] = count
                print(f"{label} S={S}: {sps:,.0f} samples/s, {count / 1e6:.2f}M parameters", file=sys.stderr, flush=True)
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    head = "".join(f"{'S=' + str(S):>10}" for S in args.scenarios)
    ratios = [S for S in args.scenarios if S != 3]
    print(f"{'model':<16}{head}" + "".join(f"{f'S={S}/S=3':>12}" for S in ratios)
          + "   parameters at S=" + "/".join(map(str, args.scenarios)))
    for label in todo:
        cells, counts = "", []
        for S in args.scenarios:
            runs = speed[(label, S)]
            cells += f"{statistics.median(runs):>10,.0f}" if runs else f"{'-':>10}"
            counts.append(f"{params[(label, S)] / 1e6:.2f}M" if (label, S) in params else "-")
        ratio = ""
        for S in ratios:  # the median of each repeat's own ratio
            pairs = list(zip(speed.get((label, S), []), speed.get((label, 3), []), strict=False))
            ratio += f"{statistics.median(a / b for a, b in pairs):>12.2f}" if pairs else f"{'-':>12}"
        print(f"{label:<16}{cells}{ratio}   {' / '.join(counts)}", flush=True)
    for (label, S), why in sorted(failed.items()):
        print(f"  {label} at S={S}: {why}")
    for (name, S), why in SKIP.items():
        if name in todo and S in args.scenarios:
            print(f"  {name} at S={S}: not run ({why})")


def tiles(args) -> None:
    """One per-scenario tower (128 -> 64 -> 1, split_merge's default) forward and backward on a batch of
    `--batch-size` rows with Zipf scenario shares, at fixed tile sizes and at `tile_size`'s choice."""
    torch.manual_seed(0)
    sizes = {"1 (per row)": 1, "4": 4, "16": 16, "64": 64, "256": 256, "segment": None, "auto": 0,
             "auto, bmm": -1}
    print(f"{'tile size':<14}" + "".join(f"{'S=' + str(S):>12}" for S in args.scenarios) + "   (ms per step)")
    times = {(k, S): [] for k in sizes for S in args.scenarios}
    chosen = {}
    for S in args.scenarios:
        shares = torch.tensor([1 / (k + 1) for k in range(S)])
        scenario = torch.multinomial(shares, args.batch_size, replacement=True)
        w1, b1 = torch.randn(S, 64, 128, requires_grad=True), torch.zeros(S, 64, requires_grad=True)
        w2, b2 = torch.randn(S, 1, 64, requires_grad=True), torch.zeros(S, 1, requires_grad=True)
        x = torch.randn(args.batch_size, 128, requires_grad=True)
        counts = torch.bincount(scenario, minlength=S).tolist()
        for _ in range(args.repeats * 2):
            for k, size in sizes.items():
                tile = max(counts) if size is None else size if size > 0 else None
                t0 = time.perf_counter()
                r = routing.ScenarioRouting(scenario, S, counts, tile=tile)
                linear = r.linear if size != -1 else (  # per-tile weights, batched matmul (before grouped_mm)
                    lambda t, w, b, r=r: routing.tile_linear(t, r.per_tile(lambda v, w=w: v.gather(w)),
                                                             r.per_tile(lambda v, b=b: v.gather(b))))
                h = torch.relu(linear(r.pack(x), w1, b1))
                r.unpack(linear(h, w2, b2)).sum().backward()
                times[(k, S)].append(1000 * (time.perf_counter() - t0))
                if size == 0:
                    chosen[S] = r.tile
    for k in sizes:
        print(f"{k:<14}" + "".join(f"{statistics.median(times[(k, S)]):>12.1f}" for S in args.scenarios))
    print("auto chose " + ", ".join(f"C={c} at S={S}" for S, c in chosen.items()))


def timed_floor(args, sets, name: str, works_of) -> dict:
    """Per repeat and S: `name` trained one epoch, each training step timed, and after it each of the works that
    `works_of(model, optimizer, S)` returns (`{key: work(batch)}`) timed alone on the same batch. Returns the
    times in ms by (key, S), `step` the training step's; the first 2 steps are left out (warm-up)."""
    times: dict = {}
    for _ in range(args.repeats):
        for S in args.scenarios:
            cfg, spec, batches = sets[S]
            torch.manual_seed(0)
            model = build_model(name, spec, {}).train()
            opt = build_optimizer(model, cfg.train)
            works = works_of(model, opt, S)
            for i, b in enumerate(batches):
                t0 = CLOCKS[args.clock]()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b), b.labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                spent = {"step": CLOCKS[args.clock]() - t0}
                for key, work in works.items():
                    t0 = CLOCKS[args.clock]()
                    work(b)
                    spent[key] = CLOCKS[args.clock]() - t0
                if i >= 2:
                    for key, seconds in spent.items():
                        times.setdefault((key, S), []).append(1000 * seconds)
    return times


def star_floor(args, sets) -> None:
    """What STAR's definition costs per step with every scenario present, apart from the rows: for each star
    layer `W_s * W` formed (the scenarios present), its two gradients (`G * W`, `(G * W_s).sum(0)`) and the
    fused Adam update of `W_s` and its moments, with PyTorch's own operators: the work that grows with S
    when every scenario is in every batch. Timed alone next to a full training step; `bound` is the S=100 /
    S=3 ratio a step would reach if everything else cost at S = S what it costs at S = 3. `matmuls` times the
    star layers' matmuls alone (forward and backward over the batch's tiles, `ScenarioRouting.linear_of`, with
    fixed weights per scenario present: no `W_s` work), whose small per-scenario GEMMs also grow with the
    scenarios present; `bound, both`: the ratio if only these two grew with S."""
    from msrec.nn import ScenarioRouting
    from msrec.nn.star import StarLinear

    def works_of(model, opt, S):
        layers = [m for m in model.modules() if isinstance(m, StarLinear)]
        grads = [torch.randn_like(layer.weight_s) for layer in layers]
        moments = [(torch.zeros_like(layer.weight_s), torch.zeros_like(layer.weight_s)) for layer in layers]
        step = torch.zeros(())
        # per layer, rows [batch, in] and weights [S, out, in] drawn beforehand
        inputs = [(torch.randn(args.batch_size, layer.weight.shape[1]), torch.randn_like(layer.weight_s))
                  for layer in layers]
        print(f"S={S}: {sum(layer.weight_s.numel() for layer in layers) / 1e6:.2f}M per-scenario weights",
              file=sys.stderr, flush=True)

        def weight_work(b):
            step.add_(1)
            for layer, g, (m, v) in zip(layers, grads, moments, strict=True):
                ws, w = layer.weight_s.detach().requires_grad_(), layer.weight.detach().requires_grad_()
                (ws * w).backward(g)
                torch._fused_adam_([layer.weight_s.data], [ws.grad], [m], [v], [], [step], amsgrad=False, lr=1e-3,
                                   beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, maximize=False)

        def matmuls(b):
            routing = ScenarioRouting.of(b, S)
            present = routing.present().num_tiles
            for rows, weights in inputs:
                tiles = routing.pack(rows[:len(b)]).requires_grad_()
                weight = weights[:present].detach().requires_grad_()
                out = routing.linear_of(tiles, lambda r, w=weight: w)
                out.backward(torch.ones_like(out))

        return {"weights": weight_work, "matmuls": matmuls}

    print_floor(args, timed_floor(args, sets, "star", works_of), "W_s work", "matmuls")


def separate_floor(args, sets) -> None:
    """What separate's per-scenario MLPs cost per step: the stacked MLP (`model.mlp`, nn.towers.ScenarioMLP)
    alone, forward and backward over the batch's own routing from the embedded batch (no gradient to the tables),
    and the row-sparse Adam update of its stacked weights, timed next to each full training step. At S = 100
    every scenario is in every batch: the grouped matmuls read each scenario's weights and write its gradient,
    Adam reads and writes weights and moments. `bound`: the S=100 / S=3 ratio if the rest of the step (the
    per-scenario tables included) cost at S = 100 what it costs at S = 3."""
    from msrec.nn import ScenarioRouting

    def works_of(model, opt, S):
        stacked = opt.parts["scenarios"]  # RowSparseAdam over the MLPs' stacked weights
        print(f"S={S}: {sum(p.numel() for p in model.mlp.parameters()) / 1e6:.2f}M per-scenario MLP weights",
              file=sys.stderr, flush=True)

        def mlp_work(b):
            with torch.no_grad():
                x = model.embedding.flat(model.own_ids(b))
            out = model.mlp(x.requires_grad_(), ScenarioRouting.of(b, S))
            stacked.zero_grad(set_to_none=True)
            out.backward(torch.full_like(out, 1 / len(b)))
            stacked.step()

        return {"weights": mlp_work}

    print_floor(args, timed_floor(args, sets, "separate", works_of), "MLP work")


def print_floor(args, times, work: str, second: str | None = None) -> None:
    """Per S: the step, the timed work (and a second one), and the S=3 step / step ratio with `bound`: the ratio
    if only the step minus that work stayed at its S=3 cost (`bound, both`: minus both works)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    base = args.scenarios[0]
    extra = f"{second + ' ms':>13}" if second else ""
    print(f"{'S':>6}{'step ms':>10}{work + ' ms':>13}{extra}{'step - ' + work:>17}{'ratio':>8}{'bound':>8}"
          + (f"{'bound, both':>13}" if second else ""))

    def bound(S, keys):
        grown = sum(med[(k, S)] - med[(k, base)] for k in keys)
        return med[("step", base)] / (med[("step", base)] + grown)

    for S in args.scenarios:
        cells = f"{med[('matmuls', S)]:>13.1f}" if second else ""
        print(f"{S:>6}{med[('step', S)]:>10.1f}{med[('weights', S)]:>13.1f}{cells}"
              f"{med[('step', S)] - med[('weights', S)]:>17.1f}{med[('step', base)] / med[('step', S)]:>8.2f}"
              f"{bound(S, ['weights']):>8.2f}" + (f"{bound(S, ['weights', 'matmuls']):>13.2f}" if second else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=600_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scenarios", type=int, nargs="+", default=[3, 10, 100, 1000])
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    ap.add_argument("--scenario-updates", choices=["row_sparse", "dense"], default="row_sparse")
    ap.add_argument("--tiles", action="store_true")
    ap.add_argument("--star-floor", action="store_true", help="star's per-scenario weight work alone, per step")
    ap.add_argument("--separate-floor", action="store_true", help="separate's per-scenario MLPs alone, per step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.tiles:
        return tiles(args)
    sets = {S: data_for(args.rows, S, args.batch_size, args.scenario_updates) for S in args.scenarios}
    print(f"{args.rows:,} synthetic rows ({sum(len(b) for b in sets[args.scenarios[0]][2]):,} train), shares "
          f"~ 1/(k+1), batch {args.batch_size}, {torch.get_num_threads()} threads, one epoch, "
          f"median of {args.repeats} (interleaved); samples per {args.clock} second; stacked per-scenario "
          f"parameters {args.scenario_updates}")
    if args.star_floor:
        return star_floor(args, sets)
    if args.separate_floor:
        return separate_floor(args, sets)
    zoo(args, sets)


if __name__ == "__main__":
    main()
