"""m2m: the scenario drives both the expert attention and the towers; two tasks give [B, 2] and both
train; attention runs within a row, so an eval prediction never depends on the row's batch mates;
multi-task training end to end on the synthetic two-task data and the Ali-CCP sample."""

import torch
from zoo_batch import (
    SCENARIO_FIELD,
    bce,
    grad_norm,
    learns,
    make_batch,
    make_spec,
    relative_change,
    strong_condition,
    with_scenario,
)

import msrec
from msrec.models.registry import build_model
from msrec.nn.meta import condition


def _model(tasks=1, **options):
    torch.manual_seed(0)
    return build_model("m2m", make_spec(tasks), {"mlp": {"dropout": 0.0, "hidden": [32, 16]}, "experts": 3, **options})


def test_changing_only_the_scenario_changes_expert_weights_and_tower_output():
    model = _model(tasks=2).eval()
    strong_condition(model)
    d = model.embedding.dim
    with torch.no_grad():
        model.v.weight.mul_(10)  # attention logits spread over the experts (at init alpha is nearly uniform)
        for expert in model.experts:  # e = [user; item; category; indicator; dense]: experts blind to the scenario
            expert.layers[0].weight[:, SCENARIO_FIELD * d:(SCENARIO_FIELD + 1) * d] = 0
    batch = make_batch(make_spec(2), [0] * 6)
    moved = with_scenario(batch, 2)
    with torch.no_grad():
        alpha, alpha_moved = model.expert_weights(batch), model.expert_weights(moved)
        assert alpha.shape == (6, 2, 3)
        torch.testing.assert_close(alpha.sum(-1), torch.ones(6, 2))  # a softmax over the experts
        # Same experts' outputs, another scenario: the meta attention alone moves the expert weights.
        torch.testing.assert_close(model._attend(batch)[1], model._attend(moved)[1], rtol=0, atol=0)
        assert float((alpha - alpha_moved).abs().amax(-1).mean()) > 0.02
        assert float((model(batch) - model(moved)).abs().mean()) > 0.02
        # The tower itself is scenario-driven: the same tower input, another scenario, another output.
        groups, z = condition(model.embedding, make_batch(make_spec(2), [0, 2]), [SCENARIO_FIELD])
        s = model.scenario_net(z)
        h = torch.randn(1, 16).expand(2, -1)
        out = model.towers[0][0](h, s, groups)
    assert relative_change(out[0], out[1]) > 0.1


def test_two_tasks_return_b_by_2_and_both_train():
    model = _model(tasks=2)
    batch = make_batch(make_spec(2), [0, 1, 2] * 10)
    assert model(batch).shape == (30, 2)
    for t in range(2):
        model.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(batch)[:, t], batch.labels[:, t]).backward()
        assert grad_norm(model.heads[t]) > 0 and grad_norm(model.towers[t]) > 0
        assert grad_norm(model.heads[1 - t]) == 0  # each task has its own head
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def per_task_loss():
        return torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels,
                                                                    reduction="none").mean(0)

    start = per_task_loss().detach()
    for _ in range(40):
        optimizer.zero_grad()
        bce(model, batch).backward()
        optimizer.step()
    end = per_task_loss().detach()
    assert bool((end < start - 0.05).all()), (start, end)


def test_eval_output_of_a_row_independent_of_its_batch_mates():
    model = _model(tasks=2).eval()
    batch = make_batch(make_spec(2), torch.tensor([0, 1, 2, 2, 1]).repeat(6), seed=3)
    full = model(batch)
    for rows in ([0], [5, 1], torch.randperm(30)[:11].tolist()):
        rows = torch.tensor(rows)
        assert torch.allclose(model(batch.select(rows)), full[rows], atol=1e-6)
    flipped = torch.arange(29, -1, -1)
    assert torch.allclose(model(batch.select(flipped)), full[flipped], atol=1e-6)


def test_learns_two_tasks_on_synthetic_data():
    before, after = learns("m2m", epochs=3, tasks=2)
    assert after > before + 0.08, (before, after)


def test_trains_on_the_ali_ccp_sample_with_metrics_per_task_and_scenario(shared_data):
    result = msrec.train({"data": {"dataset": "ali-ccp", "path": str(shared_data / "samples" / "ali-ccp")},
                          "model": {"name": "m2m", "hidden": [16], "experts": 2},
                          "train": {"epochs": 2, "batch_size": 32, "progress": False}}, save=False)
    test = result.metrics["test"]
    assert set(test["tasks"]) == {"click", "purchase"}
    for block in test["tasks"].values():
        assert block["scenarios"] and all(m["rows"] > 0 for m in block["scenarios"].values())
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.metrics["train"]["history"])
