"""`model.backbone`: the cross network and the FM pair interactions compute what their formulas say, the default
changes nothing, and every registered model sits on the backbone it is given (it builds, trains, exports, and
its output moves when the backbone's parts do: a model that ignored `backbone` fails here)."""

from __future__ import annotations

import pytest
import torch
from zoo_batch import make_batch, make_spec, relative_change

from msrec.errors import MsrecError
from msrec.models import REGISTRY, build_model
from msrec.models.registry import parse_options
from msrec.nn import FeatureEmbedding
from msrec.nn.backbone import BackboneOptions, CrossNetwork, PairInteraction
from msrec.serve.export import ExportedModel, batch_inputs, export_model

BACKBONES = {"dcn_v2": {"name": "dcn_v2", "layers": 2}, "fm": "fm", "fm_per_scenario": {"name": "fm", "per_scenario": True}}


def test_short_and_nested_forms_and_the_default():
    assert parse_options("dnn", {"backbone": "dcn_v2"}).backbone == BackboneOptions(name="dcn_v2")
    nested = parse_options("star", {"backbone": {"name": "dcn_v2", "layers": 1, "rank": 4}}).backbone
    assert (nested.name, nested.layers, nested.rank) == ("dcn_v2", 1, 4)
    assert parse_options("dnn", {}).backbone.name == "mlp"


@pytest.mark.parametrize(("backbone", "message"), [
    ({"name": "fm", "layers": 2}, "model.backbone: .*`layers` applies to backbone dcn_v2, not fm"),
    ({"name": "dcn_v2", "per_scenario": True}, "`per_scenario` applies to backbone fm, not dcn_v2"),
    ("cross", "model.backbone.name: Input should be 'mlp', 'fm' or 'dcn_v2'"),
    ({"name": "dcn_v2", "layers": 0}, "model.backbone.layers: Input should be greater than or equal to 1"),
])
def test_bad_backbone_options_name_the_key(backbone, message):
    with pytest.raises(MsrecError, match=message):
        parse_options("dnn", {"backbone": backbone})


def test_the_default_is_the_plain_concatenation_with_no_new_parameter():
    spec = make_spec()
    torch.manual_seed(0)
    default = build_model("split_merge", spec)
    torch.manual_seed(0)
    explicit = build_model("split_merge", spec, {"backbone": "mlp"})
    assert default.embedding.backbone is None
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values(), strict=True))
    batch = make_batch(spec, [0, 1, 2, 1])
    e = default.embedding.flat(batch)
    assert torch.equal(e, torch.cat([default.embedding.fields(batch).flatten(1), batch.dense], 1))


@pytest.mark.parametrize("rank", [0, 3])
def test_cross_layers_follow_dcn_v2(rank):
    """x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, with W_l = U_l V_l^T at a low rank; the width is kept."""
    torch.manual_seed(1)
    net = CrossNetwork(num_fields=3, dim=4, dense_dim=2, layers=2, rank=rank)
    for p in net.parameters():
        torch.nn.init.normal_(p)
    fields, dense = torch.randn(5, 3, 4), torch.randn(5, 2)
    x0 = x = torch.cat([fields.flatten(1), dense], 1)
    for layer in net.cross:
        w = layer.up.weight if rank == 0 else layer.up.weight @ layer.down.weight
        x = x0 * (x @ w.T + layer.up.bias) + x
    assert net.out_dim == 14
    assert torch.allclose(net(fields, dense, torch.zeros(5, dtype=torch.long)), x, atol=1e-5)


def pair_sum(fields: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """sum over i < j of (v_i W) * v_j, row by row (the definition, slowly)."""
    out = torch.zeros(fields.shape[0], fields.shape[2])
    for b in range(fields.shape[0]):
        for i in range(fields.shape[1]):
            for j in range(i + 1, fields.shape[1]):
                out[b] += (fields[b, i] @ maps[b]) * fields[b, j]
    return out


def test_fm_pairs_are_the_pairwise_products_and_per_scenario_maps_start_as_the_fm():
    torch.manual_seed(2)
    fields, scenario = torch.randn(6, 4, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    eye = torch.eye(3).expand(6, 3, 3)
    plain = PairInteraction(3, num_scenarios=3, per_scenario=False)
    assert torch.allclose(plain(fields, scenario), pair_sum(fields, eye), atol=1e-5)
    per = PairInteraction(3, num_scenarios=3, per_scenario=True)
    assert torch.allclose(per(fields, scenario), plain(fields, scenario), atol=1e-5)  # W_s = I at the start
    with torch.no_grad():
        per.specific.normal_()
    maps = per.shared + per.specific[scenario]
    assert torch.allclose(per(fields, scenario), pair_sum(fields, maps), atol=1e-4)
    moved = per(fields, torch.tensor([1, 2, 0, 1, 2, 0]))
    assert relative_change(moved, per(fields, scenario)) > 0.1  # the row's own scenario's map


def test_fm_widens_the_input_by_embed_dim_and_dcn_keeps_it():
    spec = make_spec()
    plain = FeatureEmbedding(spec, 8).flat_dim
    assert FeatureEmbedding(spec, 8, BackboneOptions(name="fm")).flat_dim == plain + 8
    assert FeatureEmbedding(spec, 8, BackboneOptions(name="dcn_v2")).flat_dim == plain


def perturb(model: torch.nn.Module) -> list:
    """Moves every backbone part of the model (cross weights; the pair vector through a hook); returns hooks."""
    hooks = []
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, CrossNetwork):
                for p in module.parameters():
                    p.add_(torch.randn_like(p))
            if isinstance(module, PairInteraction):
                hooks.append(module.register_forward_hook(lambda _m, _i, out: out + 1.0))
    return hooks


@pytest.mark.parametrize(("name", "backbone"), [(n, b) for n in sorted(REGISTRY) for b in ("dcn_v2", "fm_per_scenario")]
                         + [("dnn", "fm")])  # the plain fm's ops once (exports take a second a model)
def test_every_model_sits_on_the_backbone(name, backbone, tmp_path):
    spec = make_spec(tasks=2)
    torch.manual_seed(0)
    model = build_model(name, spec, {"backbone": BACKBONES[backbone]})
    kind = CrossNetwork if backbone == "dcn_v2" else PairInteraction
    assert any(isinstance(m, kind) for m in model.modules()), f"{name} built no {kind.__name__}"
    batch = make_batch(spec, [0, 1, 2, 2, 1, 0, 0, 1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)

    model.eval()
    with torch.no_grad():
        before = model(batch)
    exported = ExportedModel(export_model(model, spec, "onnx", tmp_path / "m.onnx"))
    logits, _ = exported(*batch_inputs(batch))
    assert float((logits - before).abs().max()) < 1e-4

    hooks = perturb(model)
    with torch.no_grad():
        after = model(batch)
    for hook in hooks:
        hook.remove()
    assert relative_change(after, before) > 1e-3, f"{name}'s output does not depend on its {backbone} backbone"


@pytest.mark.parametrize("backbone", ["mlp", "fm", "dcn_v2"])
def test_dumped_options_build_again(backbone):
    """A run directory stores `model_dump()`: every key, defaults included; loading it must not refuse them."""
    dumped = parse_options("star", {"backbone": backbone}).model_dump()
    assert parse_options("star", dumped).model_dump() == dumped
