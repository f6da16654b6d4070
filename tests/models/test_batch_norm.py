"""`batch_norm: true` never fails on a batch, or a scenario's slice of a routed batch, that holds one row."""

from __future__ import annotations

import pytest
import torch
from zoo_batch import bce, make_batch, make_spec

from msrec.errors import MsrecError
from msrec.models import REGISTRY, build_model  # the package import registers every model
from msrec.models.registry import describe_options, parse_options
from msrec.nn.mlp import BatchNorm
from msrec.nn.towers import ScenarioBatchNorm


def test_one_row_in_training_uses_and_keeps_the_running_statistics():
    norm = BatchNorm(4)
    norm(torch.randn(64, 4) * 3 + 1)  # some running statistics
    mean, var = norm.running_mean.clone(), norm.running_var.clone()
    row = torch.randn(1, 4)
    out = norm(row)
    assert torch.equal(norm.running_mean, mean) and torch.equal(norm.running_var, var)
    torch.testing.assert_close(out, norm.eval()(row))


def with_batch_norm(name: str) -> dict:
    """Batch norm on every MLP part of the model that takes it (some refuse it: star's FCN, hmoe's, adaptdhm's towers)."""
    options: dict = {"mlp": {"hidden": [8, 4], "dropout": 0.0}}
    for key, *_ in describe_options(name):
        if key.endswith(".batch_norm"):
            part = key.split(".")[0]
            trial = {**options, part: {**options.get(part, {}), "batch_norm": True}}
            try:
                parse_options(name, trial)
            except MsrecError:
                continue
            options = trial
    return options


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("scenarios", [[0, 0, 0, 1, 2, 2], [1]], ids=["one-row-scenario", "one-row-batch"])
def test_every_model_trains_on_one_row_slices(name, scenarios):
    spec = make_spec()
    torch.manual_seed(0)
    model = build_model(name, spec, with_batch_norm(name)).train()
    assert any(isinstance(m, BatchNorm | ScenarioBatchNorm) for m in model.modules()) or name in {"star", "adaptdhm", "mlora"}
    loss = bce(model, make_batch(spec, scenarios))
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", ["split_merge", "mmoe", "ple"])
def test_tower_batch_norm_puts_batch_norm_in_every_scenario_tower_and_only_there(name):
    spec = make_spec()
    torch.manual_seed(0)
    model = build_model(name, spec, {"tower": {"batch_norm": True}}).train()
    norms = {n: m for n, m in model.named_modules() if isinstance(m, BatchNorm | ScenarioBatchNorm)}
    assert norms and all(n.startswith("towers.") and isinstance(m, ScenarioBatchNorm) for n, m in norms.items())
    assert all(m.running_mean.shape[0] == spec.num_scenarios for m in norms.values())  # one per scenario tower
    before = {n: m.running_mean.clone() for n, m in norms.items()}
    model(make_batch(spec, [0, 0, 2, 2, 0]))  # the norms run: scenarios 0 and 2's move, scenario 1's do not
    moved = {s for n, m in norms.items() for s in range(3) if not torch.equal(m.running_mean[s], before[n][s])}
    assert moved == {0, 2}
    assert not any(isinstance(m, BatchNorm | ScenarioBatchNorm) for m in build_model(name, spec, {}).modules())


def test_hmoe_refuses_tower_batch_norm_and_says_why():
    with pytest.raises(MsrecError, match=r"^model\.tower: `batch_norm` is not supported here: a tower also scores "
                                         r"other scenarios' rows$"):
        parse_options("hmoe", {"tower": {"batch_norm": True}})
