"""dnn: one parameter set serves all scenarios. separate: one model per scenario, each trained only on its
own rows (rows are routed; a scenario-A batch leaves scenario B's model without gradient)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo_batch import SCENARIO_FIELD, bce, learns, make_batch, make_spec, with_scenario

from msrec.models.registry import build_model


def _model(name: str, scenarios: int = 3, tasks: int = 1):
    torch.manual_seed(0)
    return build_model(name, make_spec(tasks=tasks, scenarios=scenarios), {"mlp": {"dropout": 0.0, "hidden": [16, 8]}})


# ----------------------------------------------------------------------------------------------- dnn


def test_dnn_one_parameter_set_serves_every_scenario():
    """Whatever scenario a batch holds, the same parameters (all of them) get gradient: nothing is
    scenario-specific but the scenario's own embedding row."""
    model = _model("dnn")
    spec = make_spec()
    for s in range(spec.num_scenarios):
        model.zero_grad(set_to_none=True)
        bce(model, make_batch(spec, [s] * 16, seed=s)).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient from scenario {s}"


def test_dnn_size_does_not_grow_with_scenarios_beyond_the_indicator_embedding():
    small, large = _model("dnn", scenarios=3), _model("dnn", scenarios=12)
    extra = sum(p.numel() for p in large.parameters()) - sum(p.numel() for p in small.parameters())
    assert extra == (12 - 3) * 16  # nine more rows of the scenario field's embedding (embed_dim 16)


def test_dnn_scenario_enters_only_as_a_feature():
    """Rows moved to another scenario (indicator field included) score like the model reading that field:
    with the scenario field's embeddings made equal, the scenario makes no difference."""
    model = _model("dnn").eval()
    batch = make_batch(make_spec(), [0] * 8)
    with torch.no_grad():
        start = model.embedding.offsets[SCENARIO_FIELD]
        model.embedding.table.weight[start:start + 4] = model.embedding.table.weight[start + 1]
        assert torch.allclose(model(batch), model(with_scenario(batch, 2)))


# ------------------------------------------------------------------------------------------ separate


def scenario_grads(model, s: int) -> list[torch.Tensor]:
    """The gradients of scenario s's parameters: its rows of the interleaved table, its slice of the MLPs."""
    table = model.embedding.table.weight.grad
    S = model.num_scenarios
    own = [] if table is None else [table.view(-1, S, table.shape[1])[:, s]]
    return own + [p.grad[s] for p in model.mlp.parameters() if p.grad is not None]


@settings(max_examples=15, deadline=None)
@given(a=st.integers(0, 2), n=st.integers(1, 20), seed=st.integers(0, 1000))
def test_separate_a_scenario_a_batch_gives_other_models_no_gradient(a, n, seed):
    model = _model("separate")
    model.zero_grad(set_to_none=True)
    bce(model, make_batch(make_spec(), [a] * n, seed=seed)).backward()
    for s in range(3):
        grads = scenario_grads(model, s)
        if s == a:
            assert sum(float(g.abs().sum()) for g in grads) > 0
        else:
            assert not any(g.any() for g in grads), f"model {s} got gradient from scenario {a}"


def test_separate_scores_each_row_with_its_own_model_only():
    model = _model("separate").eval()
    with torch.no_grad():  # scenarios' tables and MLPs made different, so a row scored by another's would show
        for p in model.parameters():
            p.normal_()
    scenario = torch.tensor([2, 0, 0, 1, 2, 2, 0, 2])
    batch = make_batch(make_spec(), scenario, seed=3)
    with torch.no_grad():
        out = model(batch)
        for s in range(3):
            alone = model.scenario_model(s)(batch.select(torch.nonzero(scenario == s).squeeze(1)))
            torch.testing.assert_close(out[scenario == s], alone)


def test_separate_models_are_independent_copies_and_multi_task_shapes():
    model = _model("separate", tasks=2)
    assert model.mlp.weight[0].shape[0] == 3 and model.embedding.table.weight.shape[0] == 3 * (50 + 40 + 6 + 4)
    assert model(make_batch(make_spec(tasks=2), [0, 1, 2, 1])).shape == (4, 2)


def test_separate_loads_a_run_with_one_dnn_per_scenario():
    spec = make_spec()
    torch.manual_seed(0)
    dnns = [build_model("dnn", spec, {"mlp": {"dropout": 0.0, "hidden": [16, 8]}}) for _ in range(3)]
    model = _model("separate").eval()
    state = {f"models.{s}.{k}": v for s, dnn in enumerate(dnns) for k, v in dnn.state_dict().items()}
    assert model.load_state_dict(state, strict=True)
    scenario = torch.tensor([1, 0, 2, 2, 1])
    batch = make_batch(spec, scenario)
    with torch.no_grad():
        out = model(batch)
        for s in range(3):
            rows = torch.nonzero(scenario == s).squeeze(1)
            torch.testing.assert_close(out[rows], dnns[s].eval()(batch.select(rows)))


def test_separate_learns():
    before, after = learns("separate", {"mlp": {"hidden": [32]}}, epochs=2)
    assert after > before + 0.05 and after > 0.6


def test_routing_reads_the_batch_counts_instead_of_counting_on_the_device(monkeypatch):
    """Batches cut from a table carry their scenario counts (counted on the host), so a routed model needs
    no device-to-host copy of counts per step; the output is the same as when routing counts itself."""
    import msrec.nn.routing
    from msrec.data.table import TensorTable

    model = _model("separate").eval()
    batch = make_batch(make_spec(), [2, 0, 2, 2, 0, 2])
    table = TensorTable(sparse=batch.sparse, dense=batch.dense, scenario=batch.scenario, labels=batch.labels)
    (cut,) = table.batches(6)
    assert cut.scenario_counts == [2, 0, 4]
    with torch.no_grad():
        expected = model(batch)
        monkeypatch.setattr(msrec.nn.routing.torch, "bincount", lambda *a, **k: pytest.fail("counted on device"))
        torch.testing.assert_close(model(cut), expected)
