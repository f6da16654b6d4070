"""lhuc: one weight in [0, 2] per field; a field whose weight is 0 has no influence on the prediction."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo_batch import learns, make_batch, make_spec

from msrec.models.registry import build_model

ITEM = 1  # the `item` field of make_spec


def _model():
    torch.manual_seed(0)
    return build_model("lhuc", make_spec(), {"mlp": {"dropout": 0.0}}).eval()


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.0, 50.0), shift=st.floats(-30.0, 30.0), seed=st.integers(0, 1000))
def test_weights_lie_in_0_2_one_per_field(scale, shift, seed):
    model = _model()
    last = model.gate.net.layers[-1]
    with torch.no_grad():  # push the weight net anywhere, saturation included
        torch.manual_seed(seed)
        last.weight.normal_(0, scale)
        last.bias.fill_(shift)
    weights = model.field_weights(make_batch(make_spec(), [0, 1, 2, 1], seed=seed))
    assert weights.shape == (4, model.embedding.num_fields) == (4, 4)
    assert bool(((weights >= 0) & (weights <= 2)).all())


def test_weights_depend_on_the_scenario_and_start_at_one():
    model = _model()
    batch = make_batch(make_spec(), [0, 1, 2])
    assert torch.equal(model.field_weights(batch), torch.ones(3, 4))  # the model starts as dnn
    with torch.no_grad():
        model.gate.net.layers[-1].weight.normal_(0, 1.0)
    w = model.field_weights(batch)
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2])


def _change_item(batch):
    sparse = batch.sparse.clone()
    sparse[:, ITEM] = sparse[:, ITEM] % 39 + 1  # every row gets another item
    return type(batch)(sparse=sparse, dense=batch.dense, scenario=batch.scenario, labels=batch.labels)


def test_a_field_with_weight_zero_has_no_influence():
    model = _model()
    with torch.no_grad():
        model.embedding.table.weight.normal_(0, 1.0)  # make every field matter
    batch = make_batch(make_spec(), [0, 1, 2] * 4)
    other = _change_item(batch)
    assert not torch.allclose(model(batch), model(other))  # with weight 1 the item changes the prediction
    last = model.gate.net.layers[-1]
    with torch.no_grad():
        last.weight[ITEM] = 0.0
        last.bias[ITEM] = -1e4  # 2 * sigmoid(-1e4) == 0 exactly
    assert bool((model.field_weights(batch)[:, ITEM] == 0).all())
    assert torch.equal(model(batch), model(other))


def test_learns_on_synthetic_data():
    before, after = learns("lhuc", epochs=3)
    assert after > before + 0.08, (before, after)
