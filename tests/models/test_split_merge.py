"""split_merge: towers see and learn from their own scenario's rows only; the shared bottom from all."""

from __future__ import annotations

import torch
from zoo_batch import assert_one_head_per_task, bce, grad_norm, learns, make_batch, make_spec

from msrec.models.registry import build_model


def build(spec, **options):
    torch.manual_seed(0)
    return build_model("split_merge", spec, {"mlp": {"dropout": 0.0}, "tower": {"dropout": 0.0}, **options})


def test_no_scenario_b_rows_gives_tower_b_exactly_zero_gradient():
    spec = make_spec()
    model = build(spec)
    bce(model, make_batch(spec, [0, 2, 0, 2, 2, 0, 0])).backward()
    assert grad_norm(model.towers, 1) == 0.0
    assert grad_norm(model.towers, 0) > 0 and grad_norm(model.towers, 2) > 0
    assert grad_norm(model.bottom) > 0 and grad_norm(model.embedding) > 0


def test_bottom_gets_gradient_from_every_scenario():
    spec = make_spec()
    for s in range(spec.num_scenarios):
        model = build(spec)
        bce(model, make_batch(spec, [s] * 6, seed=s)).backward()
        assert grad_norm(model.bottom) > 0
        assert [grad_norm(model.towers, t) > 0 for t in range(3)] == [t == s for t in range(3)]


def test_a_towers_weights_change_only_its_own_rows():
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [2, 0, 0, 2, 1, 0, 0, 2])
    with torch.no_grad():
        before = model(batch)
        model.towers.weight[0][1].add_(0.5)  # scenario 1's first tower layer
        after = model(batch)
    changed = (after - before).abs().sum(1) > 0
    assert changed.tolist() == (batch.scenario == 1).tolist()


def test_rows_are_merged_back_in_order_and_scored_by_their_own_tower():
    spec = make_spec()
    model = build(spec).eval()
    batch = make_batch(spec, [1, 0, 2, 2, 1, 0, 1])
    with torch.no_grad():
        out = model(batch)
        h = model.bottom(model.embedding.flat(batch))
        expected = torch.stack([model.towers.scenario(int(s))(h[i:i + 1])[0] for i, s in enumerate(batch.scenario)])
    torch.testing.assert_close(out, expected)


def test_multi_task_one_head_per_task():
    spec = make_spec(tasks=2)
    model = build(spec)
    assert_one_head_per_task(model, spec, lambda: model.towers.weight[-1], scenario=0)


def test_learns_on_synthetic_data():
    before, after = learns("split_merge")
    assert after > before + 0.08 and after > 0.6, (before, after)


def test_learns_two_tasks():
    before, after = learns("split_merge", tasks=2)
    assert after > before + 0.05, (before, after)
