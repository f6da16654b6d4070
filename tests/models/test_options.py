"""Model options: every MLP part is a nested `MLPOptions` (`mlp`, `tower`, `gate`, ...). Options written in
0.1's flat spelling build the network 0.1 built; nested keys reach the part they name; unknown keys are
errors that list the allowed ones; every option has a meaning, and the docs' option tables agree."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from zoo_batch import make_batch, make_spec

from msrec.config import apply_overrides, parse_config
from msrec.errors import MsrecError
from msrec.models import REGISTRY, build_model
from msrec.models.registry import describe_options, parse_options
from msrec.nn.mlp import BatchNorm
from msrec.nn.towers import ScenarioBatchNorm
from msrec.schema import FeatureSpec

LEGACY = json.loads((Path(__file__).parent / "legacy_0_1.json").read_text())
DOCS = Path(__file__).parents[2] / "docs" / "models"


def structure(model: torch.nn.Module) -> tuple[dict, dict]:
    """Tensor shapes by name (what a saved run must match) and the class of each leaf module but Linear."""
    tensors = {k: list(v.shape) for k, v in model.state_dict().items()}
    modules = {k: type(m).__name__ for k, m in model.named_modules()
               if not list(m.children()) and not isinstance(m, torch.nn.Linear)}
    return tensors, modules


def parts(name: str) -> list[str]:
    """The model's MLP parts (the backbone, common to every model, is docs/backbones.md's)."""
    return list(dict.fromkeys(key.split(".")[0] for key, *_ in describe_options(name)
                              if "." in key and not key.startswith("backbone.")))


@pytest.mark.parametrize("case", sorted(LEGACY))
def test_a_0_1_flat_config_builds_the_0_1_network(case):
    """legacy_0_1.json holds what 0.1 built from these flat options (its parameter names and shapes, and its
    activations, dropouts and norms): a 0.1 run directory loads into the same network. Models whose
    per-scenario modules are now stacked (`[S, ...]` tensors, nn.towers) load 0.1's tensors into the stacks:
    every 0.1 tensor is taken, every parameter is filled, and the values land (their sum is kept)."""
    want = LEGACY[case]
    spec = FeatureSpec(sparse_fields=["user", "item", "category", "scenario"], sparse_vocab=[50, 40, 6, 3],
                       list_fields=[], list_vocab=[], dense_dim=2, scenario_fields=[3], scenarios=["s0", "s1"],
                       tasks=["t0", "t1"])
    model = build_model(case.split("/")[0], spec, want["options"])
    tensors, modules = structure(model)
    if tensors == want["tensors"]:
        assert modules == want["modules"]
        return
    g = torch.Generator().manual_seed(0)
    old = {k: torch.tensor(0) if k.endswith("num_batches_tracked") else torch.rand(shape, generator=g) + 0.5
           for k, shape in want["tensors"].items()}
    missing, unexpected = model.load_state_dict(dict(old), strict=False)
    assert not missing and not unexpected
    total = sum(float(v.sum()) for k, v in old.items() if not k.endswith("num_batches_tracked"))
    assert sum(float(v.sum()) for v in model.state_dict().values()) == pytest.approx(total, rel=1e-6)
    kinds = {m for m in want["modules"].values() if m not in ("BatchNorm", "PReLU")}
    assert kinds <= set(modules.values())  # the same activations, dropouts (per-scenario norms and PReLUs stacked)


@pytest.mark.parametrize(("name", "part"), [(n, p) for n in sorted(REGISTRY) for p in parts(n)])
def test_every_nested_part_option_changes_the_network(name, part):
    spec = make_spec(tasks=2)
    refuses_batch_norm = (name, part) in {("star", "mlp"), ("mlora", "mlp"), ("hmoe", "tower"),
                                           ("dynamic_weight", "generator"), ("adaptdhm", "mlp")}
    changed = {"hidden": [7], "dropout": 0.37, "activation": "prelu", "batch_norm": not refuses_batch_norm}
    default, _ = structure(build_model(name, spec))
    model = build_model(name, spec, {part: changed})
    tensors, _ = structure(model)
    assert tensors != default and any(7 in shape for shape in tensors.values())
    assert any(isinstance(m, torch.nn.PReLU) or getattr(m, "prelu", None) is not None for m in model.modules())
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.37 for m in model.modules())
    assert any(isinstance(m, BatchNorm | ScenarioBatchNorm) for m in model.modules()) == (not refuses_batch_norm)
    assert model.train()(make_batch(spec, [0, 1, 2, 2])).shape == (4, 2)
    if refuses_batch_norm:
        with pytest.raises(MsrecError, match=f"model.{part}: `batch_norm` is not supported"):
            parse_options(name, {part: {"batch_norm": True}})


def test_set_reaches_nested_options_and_keys_left_out_keep_the_parts_defaults():
    raw = {"data": {"train": "t.csv"}, "model": {"name": "split_merge"}}
    raw = apply_overrides(raw, ["model.mlp.hidden=[64]", "model.tower.hidden=[32, 16]"])
    cfg = parse_config(raw)
    options = parse_options(cfg.model.name, cfg.model.options())
    assert options.mlp.hidden == [64] and options.mlp.dropout == 0.2
    assert options.tower.hidden == [32, 16] and options.tower.dropout == 0.1  # the tower's default, not MLP's


def test_0_1_keys_map_to_the_nested_ones():
    flat = parse_options("split_merge", {"hidden": [8], "dropout": 0.0, "activation": "gelu", "batch_norm": True,
                                         "tower_hidden": [4], "tower_dropout": 0.3})
    nested = parse_options("split_merge", {"mlp": {"hidden": [8], "dropout": 0.0, "activation": "gelu",
                                                   "batch_norm": True},
                                           "tower": {"hidden": [4], "dropout": 0.3, "activation": "gelu"}})
    assert flat == nested
    assert parse_options("ppnet", {"gate_hidden": 16}).gate.hidden == [16]  # 0.1's one-width gates
    assert parse_options("scenario_bias", {"shallow_dropout": 0.5}).logit_dropout == 0.5


@pytest.mark.parametrize(("options", "message"), [
    ({"hidden": [8], "mlp": {"hidden": [4]}}, "`hidden` is the 0.1 spelling of `mlp.hidden`: give one of them"),
    ({"activation": "relux"}, "model.activation: Input should be 'relu'"),  # named as the user spelt it
    ({"mlp": {"activation": "relux"}}, "model.mlp.activation: Input should be 'relu'"),
    ({"tower_hidden": ["x"]}, "model.tower_hidden.0: Input should be a valid integer"),
    ({"tower": {"hiden": [3]}}, "unknown option `tower.hiden` for model split_merge .*tower.hidden, tower.dropout"),
    ({"towers": {}}, "unknown option `towers` for model split_merge .*embed_dim, mlp.hidden"),
])
def test_option_errors_name_the_key(options, message):
    with pytest.raises(MsrecError, match=message):
        parse_options("split_merge", options)


def test_another_models_0_1_key_is_unknown():
    with pytest.raises(MsrecError, match="unknown option `tower_hidden` for model dnn"):
        parse_options("dnn", {"tower_hidden": [8]})


@pytest.mark.parametrize("name", ["mmoe", "ple", "m2m"])
def test_experts_need_a_width(name):
    with pytest.raises(MsrecError, match="model.mlp: `hidden` needs at least one width"):
        parse_options(name, {"mlp": {"hidden": []}})


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_option_has_a_type_a_default_and_a_meaning(name):
    rows = describe_options(name)
    keys = [key for key, *_ in rows]
    assert len(keys) == len(set(keys)) and {"embed_dim", "mlp.hidden", "mlp.dropout"} <= set(keys)
    defaults = parse_options(name, {}).model_dump()
    for key, type_name, default, meaning in rows:
        assert type_name and meaning and "\n" not in meaning, key
        node = defaults
        for part in key.split("."):
            node = node[part]
        assert node == default, key


def option_table(name: str) -> dict[str, str]:
    """The `| `key` | default | meaning |` rows of docs/models/<name>.md: key -> default cell."""
    rows = re.findall(r"^\| `([\w.]+)` \| ([^|]*) \|", (DOCS / f"{name}.md").read_text(), re.MULTILINE)
    return {key: default.strip() for key, default in rows}


@pytest.mark.parametrize("name", sorted(p.stem for p in DOCS.glob("*.md")))
def test_docs_option_table_matches_the_option_classes(name):
    """Every option of the model's own is in its page's table (`mlp.hidden` too: its meaning differs per model),
    nothing else is, and a default written as a literal is the class's default."""
    rows = {key: default for key, _, default, _ in describe_options(name)}
    table = option_table(name)
    own = {key for key in rows if not key.startswith(("mlp.", "backbone.")) and key not in ("embed_dim", "table_dtype")}
    named = set(table) | {key for key in rows if key.split(".")[0] in table}
    assert own | {"mlp.hidden"} <= named, "options missing from the table"
    assert set(table) <= set(rows) | set(parts(name)), "the table lists options that do not exist"
    for key, cell in table.items():
        if cell.startswith("`") and cell.endswith("`"):
            literal = yaml.safe_load(cell.strip("`"))
            expected = ({k: rows[f"{key}.{k}"] for k in literal} if key in parts(name) and isinstance(literal, dict)
                        else rows[key])
            assert literal == expected, key


@pytest.mark.parametrize("name", sorted(p.stem for p in DOCS.glob("*.md")))
def test_docs_config_examples_are_valid_options(name):
    examples = re.findall(r"^model: (\{.*\})$", (DOCS / f"{name}.md").read_text(), re.MULTILINE)
    for example in examples:
        options = yaml.safe_load(example)
        parse_options(options.pop("name"), options)
