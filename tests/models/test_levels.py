"""Per-scenario parameters shared by level (nn.levels): combinations holding a level value share its part, a
level id 0 is the identity, the per-tile composition is each combination's, and a flat scenario (or
`level_sharing: false`) builds exactly the model of before."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from msrec.data.table import Batch
from msrec.models.registry import build_model
from msrec.nn.levels import LevelParts
from msrec.nn.mlp import MLPOptions
from msrec.nn.routing import ScenarioRouting
from msrec.nn.towers import ScenarioLinear, ScenarioTowers
from msrec.schema import FeatureSpec, ScenarioLevels

# countries A, B, C x placements x, y; (B, *) fell back from the placement level
COMBINATIONS = {"A/x": [1, 1], "A/y": [1, 2], "B/x": [2, 1], "C/y": [3, 2], "B/*": [2, 0]}
LEVELS = ScenarioLevels(["country", "placement"], [["A", "B", "C"], ["x", "y"]], list(COMBINATIONS.values()))
A_X, A_Y, B_X, C_Y, B_ANY = range(5)
MODELS = ["star", "split_merge", "mmoe", "hmoe", "ple", "mlora"]
# hmoe mixes every combination's tower into each row's score: with top_k 1 a row reads its own tower only
OPTIONS = {"star": {}, "split_merge": {}, "mmoe": {}, "hmoe": {"top_k": 1}, "ple": {"specific_experts": 2}, "mlora": {}}


def spec(levels: ScenarioLevels | None = LEVELS) -> FeatureSpec:
    return FeatureSpec(sparse_fields=["user", "item", "country", "placement"], sparse_vocab=[30, 20, 4, 3],
                       list_fields=[], list_vocab=[], dense_dim=2, scenario_fields=[2, 3],
                       scenarios=list(COMBINATIONS), tasks=["click"], levels=levels)


def batch(scenario: list[int], seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    s = torch.tensor(scenario)
    n = len(s)
    ids = LEVELS.tensor()[s]
    sparse = torch.stack([torch.randint(1, 30, (n,), generator=g), torch.randint(1, 20, (n,), generator=g),
                          ids[:, 0], ids[:, 1]], 1)
    return Batch(sparse=sparse, dense=torch.randn(n, 2, generator=g), scenario=s,
                 labels=torch.randint(0, 2, (n, 1), generator=g).float())


def per_scenario(name: str) -> bool:
    """The level parts and the combinations' own slices (not the shared network, nor per-combination norms)."""
    return ".parts." in name or name.endswith(("weight_s", "bias_s", ".down", ".up")) or name.startswith(
        ("towers.weight.", "towers.bias.", "gates.weight", "gates.bias")) or (
        name.startswith("levels.") and (".specific.weight." in name or ".specific.bias." in name
                                        or ".gates.weight" in name or ".gates.bias" in name))


def step_on(model: torch.nn.Module, rows: Batch) -> None:
    """One SGD step on `rows` of the per-scenario parameters only: what moves then is what they share."""
    params = [p for n, p in model.named_parameters() if per_scenario(n)]
    model.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(model(rows), rows.labels).backward()
    with torch.no_grad():
        for p in params:
            p -= 1.0 * p.grad


@pytest.mark.parametrize("own", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_a_step_on_one_combination_moves_those_sharing_a_level_value_and_no_other(name, own):
    torch.manual_seed(0)
    model = build_model(name, spec(), {**OPTIONS[name], "combination_part": own, "mlp": {"dropout": 0.0}}).eval()
    probe = batch([A_X, A_Y, B_X, C_Y, B_ANY] * 4, seed=1)
    before = model(probe).detach()
    step_on(model, batch([A_X] * 16))
    moved = (model(probe).detach() - before).abs().view(4, 5).amax(0)
    assert moved[A_X] > 1e-3
    assert moved[A_Y] > 1e-3, "A/y shares country A with A/x"
    assert moved[B_X] > 1e-3, "B/x shares placement x with A/x"
    assert moved[C_Y] == 0 and moved[B_ANY] == 0, "no level value in common with A/x"


@pytest.mark.parametrize("name", MODELS)
def test_without_level_sharing_a_step_on_one_combination_moves_no_other(name):
    torch.manual_seed(0)
    model = build_model(name, spec(), {**OPTIONS[name], "level_sharing": False, "mlp": {"dropout": 0.0}}).eval()
    probe = batch([A_X, A_Y, B_X, C_Y, B_ANY] * 4, seed=1)
    before = model(probe).detach()
    step_on(model, batch([A_X] * 16))
    moved = (model(probe).detach() - before).abs().view(4, 5).amax(0)
    assert moved[A_X] > 1e-3 and moved[1:].max() == 0


@pytest.mark.parametrize("name", MODELS)
def test_a_flat_scenario_or_level_sharing_off_builds_the_model_of_before(name):
    """Same names, shapes and initial values as the flat model (the 0.1 snapshots of test_options hold too)."""
    flat = spec(levels=None)
    for options in ({}, {"level_sharing": False}):
        torch.manual_seed(3)
        state = build_model(name, flat, options).state_dict()
        torch.manual_seed(3)
        reference = build_model(name, flat, {"level_sharing": False, "combination_part": False}).state_dict()
        assert state.keys() == reference.keys()
        for key in state:
            torch.testing.assert_close(state[key], reference[key])
    torch.manual_seed(3)
    off = build_model(name, spec(), {"level_sharing": False}).state_dict()
    assert {k: v.shape for k, v in off.items()} == {k: v.shape for k, v in build_model(name, flat).state_dict().items()}


@pytest.mark.parametrize("op", ["mul", "add"])
@pytest.mark.parametrize("tile", [None, 1, 2, 8])
def test_parts_compose_per_tile_as_per_combination_and_level_id_0_is_the_identity(op, tile):
    torch.manual_seed(0)
    parts = LevelParts(LEVELS, (3, 2), op, base=torch.randn(3, 2) if op == "add" else None)
    with torch.no_grad():
        for p in parts.parts:
            p.normal_()  # row 0 too: it must not be read
    own = torch.randn(5, 3, 2)
    country, placement = parts.parts[0], parts.parts[1]
    identity = torch.ones(3, 2) if op == "mul" else torch.zeros(3, 2)
    for s, (c, p) in enumerate(LEVELS.ids):
        pieces = [country[c], placement[p] if p else identity, own[s]]
        expected = pieces[0] * pieces[1] * pieces[2] if op == "mul" else sum(pieces) + parts.base
        torch.testing.assert_close(parts.every(own)[s], expected)
    scenario = torch.tensor([4, 0, 0, 1, 3, 3, 3, 2, 4, 0, 1])
    routing = ScenarioRouting(scenario, 5, tile=tile)
    torch.testing.assert_close(routing.per_tile(lambda r: parts.compose(r, own)), parts.every(own)[routing.tile_scenario])


def test_level_shared_towers_and_gates_score_each_row_with_its_combinations_network():
    torch.manual_seed(0)
    towers = ScenarioTowers(6, MLPOptions(hidden=[8], dropout=0.0), 2, 5, levels=LEVELS)
    gates = ScenarioLinear(6, 3, 5, levels=LEVELS, own=False)
    with torch.no_grad():
        for p in [*towers.parameters(), *gates.parameters()]:
            p.normal_()
    scenario = torch.tensor([4, 0, 0, 1, 3, 3, 3, 2, 4, 0, 1])
    x = torch.randn(len(scenario), 6)
    routing = ScenarioRouting(scenario, 5)
    out, gate, every = towers(x, routing), gates(x, routing), towers.every(x)
    for row, s in enumerate(scenario.tolist()):
        torch.testing.assert_close(out[row], towers.scenario(s)(x[row:row + 1])[0])
        torch.testing.assert_close(every[row, s], out[row])
        torch.testing.assert_close(gate[row], gates.scenario(s)(x[row]))


def test_level_tables_are_per_level_value_and_own_slices_per_combination():
    state = build_model("star", spec()).state_dict()
    assert state["fcn.layers.0.weight_levels.parts.0"].shape[0] == 4  # countries A, B, C and id 0
    assert state["fcn.layers.0.weight_levels.parts.1"].shape[0] == 3
    assert state["fcn.layers.0.weight_s"].shape[0] == 5
    no_own = build_model("split_merge", spec(), {"combination_part": False}).state_dict()
    assert not any(k.startswith(("towers.weight.", "towers.bias.")) for k in no_own)


def grown_spec(values: list[list[str]], new: list[int]) -> FeatureSpec:
    levels = ScenarioLevels(LEVELS.columns, values, [*LEVELS.ids, new])
    grown = spec(levels)
    grown.scenarios = [*grown.scenarios, "new"]
    grown.sparse_vocab = [30, 20, len(values[0]) + 1, len(values[1]) + 1]
    return grown


@pytest.mark.parametrize("name", ["star", "split_merge", "mlora"])
def test_extend_grows_new_combinations_and_new_level_values(name):
    """msrec extend's growth (`grow_model`): a new combination of known values gets its own part (a copy of its
    source's) and reads its levels' trained parts; a new level value gets level parts of its own (the identity
    at first), which train as new entries."""
    from msrec.extend import grow_model

    def run():
        torch.manual_seed(0)
        return SimpleNamespace(model=build_model(name, spec()).eval(), encoder=SimpleNamespace(scenario_names=list(COMBINATIONS)),
                               config=SimpleNamespace(model=SimpleNamespace(name=name, options=dict)))

    old = run()
    model, masks = grow_model(old, SimpleNamespace(spec=lambda: grown_spec(LEVELS.values, [3, 1])), [C_Y])  # C/x
    model.eval()
    probe = batch([A_X, A_Y, B_X, C_Y, B_ANY] * 2, seed=1)
    torch.testing.assert_close(model(probe), old.model(probe))  # the old combinations score as before
    assert masks and not any(".parts." in key for key in masks)  # only the new own slices train
    # a new country D: its level parts grow (the identity, trained as new entries), the old combinations unchanged
    old = run()
    model, masks = grow_model(old, SimpleNamespace(spec=lambda: grown_spec([["A", "B", "C", "D"], ["x", "y"]], [4, 1])),
                              [C_Y])
    model.eval()
    torch.testing.assert_close(model(probe), old.model(probe))
    grown_levels = {key: mask for key, mask in masks.items() if key.endswith(".parts.0")}
    assert grown_levels and all(mask.flatten().tolist() == [False] * 4 + [True] for mask in grown_levels.values())
    assert not any(key.endswith(".parts.1") for key in masks)  # no new placement


@pytest.mark.parametrize("name", ["star", "split_merge", "mlora"])
def test_a_traced_level_shared_model_scores_other_batches_as_the_model(name):
    """Export traces every row as its own tile: the per-tile composition, for any batch."""
    model = build_model(name, spec()).eval()

    class Encoded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, sparse, dense, scenario):
            return self.model(Batch(sparse=sparse, dense=dense, scenario=scenario))

    probe = batch([0, 1, 2, 3, 4] * 3)
    traced = torch.jit.trace(Encoded(), (probe.sparse, probe.dense, probe.scenario), check_trace=False)
    other = batch([4, 4, 0, 2, 1, 3, 3], seed=5)
    torch.testing.assert_close(traced(other.sparse, other.dense, other.scenario), model(other))


@pytest.mark.parametrize("op", ["mul", "add"])
def test_grown_level_tables_keep_every_old_part_and_start_new_values_at_the_identity(op):
    parts = LevelParts(LEVELS, (3,), op)
    with torch.no_grad():
        for p in parts.parts:
            p.normal_()
    before = [p.detach().clone() for p in parts.parts]
    parts.grow_levels([6, 3])  # two new countries, no new placement
    assert [tuple(p.shape) for p in parts.parts] == [(6, 3), (3, 3)]
    torch.testing.assert_close(parts.parts[0][:4], before[0])
    torch.testing.assert_close(parts.parts[1], before[1])
    assert (parts.parts[0][4:] == (1.0 if op == "mul" else 0.0)).all()
    assert all(getattr(p, "scenario_stacked", False) for p in parts.parts)


@pytest.mark.parametrize("present", [[0, 1, 2, 3], [0, 2, 4]])
@pytest.mark.parametrize("row_sparse", [False, True])
def test_parts_composed_once_per_present_combination_match_every_combinations_values_and_gradients(present, row_sparse):
    """Fewer combinations present than tiles: parts are composed once per combination present (a routing of
    distinct ascending ids) and gathered per level by *level ids*, which repeat: values and gradients must
    equal those of the composition of every combination (also when as many combinations are present as a
    level table has rows, and with the row-sparse gradients the trainer asks for)."""
    results = []
    for path in ("tiles", "every"):
        torch.manual_seed(0)
        parts = LevelParts(LEVELS, (3, 2), "mul")
        with torch.no_grad():
            for p in parts.parts:
                p.normal_()
                p.row_sparse_grad = row_sparse
        own = torch.randn(5, 3, 2, requires_grad=True)
        scenario = torch.tensor(present * 3)
        routing = ScenarioRouting(scenario, 5, tile=1)
        out = (routing.per_tile(lambda r, p=parts, o=own: p.compose(r, o)) if path == "tiles"
               else parts.every(own)[routing.tile_scenario])
        out.pow(2).sum().backward()
        results.append([out, own.grad, *(p.grad.to_dense() for p in parts.parts)])
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)
