"""`msrec extend`: a run learns a scenario held back from its training; its old scenarios score bit for bit as
before, only the new rows change, the old run is never modified, and the new run is an ordinary run."""

from __future__ import annotations

import functools
import hashlib
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
import torch

from msrec.api import evaluate, predict, train
from msrec.errors import MsrecError
from msrec.extend import MIN_BATCH, REPLAY_LR, STEPS_PER_EPOCH, _freeze, extend, grow_model
from msrec.extend_data import read_new, sources
from msrec.runs import load_run

HELD = "s2"  # the smallest synthetic scenario


@pytest.fixture(scope="module")
def files(synthetic_csv, tmp_path_factory):
    table = pacsv.read_csv(synthetic_csv)
    folder = tmp_path_factory.mktemp("extend")
    held = pc.equal(table["scenario"], HELD)
    pacsv.write_csv(table.filter(pc.invert(held)), folder / "old.csv")
    pacsv.write_csv(table.filter(held), folder / "new.csv")
    return folder


def _run(files, synthetic_config, name: str, model: dict):
    config = synthetic_config(data={"train": str(files / "old.csv"), "scenario_features": ["scenario"]},
                              model=model, train={"epochs": 2})
    if "mlp" in model:
        del config["model"]["hidden"]
    return train(config, out=files / name).run_dir


@pytest.fixture(scope="module")
def star_run(files, synthetic_config):
    return _run(files, synthetic_config, "star", {"name": "star", "embed_dim": 4, "hidden": [8]})


def _digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_extend_adds_the_held_scenario_and_keeps_the_old_ones(files, star_run, tmp_path):
    before = _digest(star_run)
    old = load_run(star_run)
    metrics = extend(star_run, files / "new.csv", tmp_path / "run2", ["train.epochs=2", "extend.vocab=indicators"])
    assert _digest(star_run) == before  # RUN untouched
    assert metrics["extend"]["new_scenarios"] == [HELD]
    new = load_run(tmp_path / "run2")
    assert new.encoder.scenario_names == [*old.encoder.scenario_names, HELD]
    # old scenarios' rows score bit for bit as with the old run
    old_scores = predict(star_run, files / "old.csv", keep_columns=False)
    new_scores = predict(tmp_path / "run2", files / "old.csv", keep_columns=False)
    assert old_scores.equals(new_scores)
    # only the new rows changed: every old entry of every tensor is the old one
    grown, base = new.model.state_dict(), old.model.state_dict()
    s_old = len(old.encoder.scenario_names)
    changed = 0
    for key, tensor in base.items():
        if "table" in key:
            continue  # the fused table's old rows move down by the inserted ones, checked below
        if grown[key].shape == tensor.shape:
            assert torch.equal(grown[key], tensor), key
        else:
            assert torch.equal(grown[key][:s_old], tensor), key
            changed += not torch.equal(grown[key][s_old:], tensor[[0]].expand_as(grown[key][s_old:]))
    assert changed  # the new scenario's rows trained
    scenario_field = new.encoder.schema.sparse.index("scenario")
    old_table, new_table = base["embedding.table.weight"], grown["embedding.table.weight"]
    sizes_old, sizes_new = old.encoder.spec().sparse_vocab, new.encoder.spec().sparse_vocab
    assert sizes_new[scenario_field] == sizes_old[scenario_field] + 1
    start = sum(sizes_old[:scenario_field])
    assert torch.equal(new_table[: start + sizes_old[scenario_field]], old_table[: start + sizes_old[scenario_field]])
    assert torch.equal(new_table[start + sizes_new[scenario_field]:], old_table[start + sizes_old[scenario_field]:])
    # RUN2 scores its new scenario and reports the comparison with both baselines
    scored = predict(tmp_path / "run2", files / "new.csv", keep_columns=False)
    assert scored.num_rows == pacsv.read_csv(files / "new.csv").num_rows
    assert evaluate(tmp_path / "run2")["tasks"]["click"]["scenarios"][HELD]["auc"] > 0
    entry = metrics["extend"]["comparison"]["click"][HELD]
    assert {"extend_auc", "unknown_auc", "scratch_auc", "vs_unknown", "vs_scratch"} <= set(entry)
    assert entry["vs_unknown"]["low"] <= entry["vs_unknown"]["delta"] <= entry["vs_unknown"]["high"]


def test_extend_all_trains_the_old_parameters_too(files, star_run, tmp_path):
    extend(star_run, files / "new.csv", tmp_path / "run2", ["extend.all=true", "extend.scratch=false"])
    old, new = load_run(star_run).model.state_dict(), load_run(tmp_path / "run2").model.state_dict()
    assert not torch.equal(old["fcn.layers.0.weight"], new["fcn.layers.0.weight"])


def test_extend_errors(files, star_run, synthetic_config, tmp_path):
    before = _digest(star_run)
    with pytest.raises(MsrecError, match="no scenario unseen"):
        extend(star_run, files / "old.csv", tmp_path / "a")
    table = pacsv.read_csv(files / "new.csv")
    pacsv.write_csv(table.drop_columns(["item_price"]), tmp_path / "missing.csv")
    with pytest.raises(MsrecError, match="item_price"):
        extend(star_run, tmp_path / "missing.csv", tmp_path / "b")
    with pytest.raises(MsrecError, match="never modifies"):
        extend(star_run, files / "new.csv", star_run)
    assert _digest(star_run) == before
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_model_whose_parts_cannot_grow_is_named(files, synthetic_config, tmp_path):
    run = _run(files, synthetic_config, "sar_net", {"name": "sar_net", "embed_dim": 4})
    before = _digest(run)
    with pytest.raises(MsrecError, match="model sar_net"):  # fails midway: the encoder has grown, the model not
        extend(run, files / "new.csv", tmp_path / "run2", ["extend.scratch=false"])
    assert _digest(run) == before and not (tmp_path / "run2").exists()


def test_batch_norm_statistics_of_frozen_parts_are_put_back(files, synthetic_config, tmp_path):
    """A shared batch norm's running statistics move in training mode whatever is frozen: extend puts every
    old value back, so the old scenarios still score bit for bit."""
    run = _run(files, synthetic_config, "split_merge",
               {"name": "split_merge", "embed_dim": 4, "mlp": {"hidden": [8], "batch_norm": True}})
    extend(run, files / "new.csv", tmp_path / "run2", ["extend.scratch=false", "extend.vocab=indicators"])
    assert predict(run, files / "old.csv", keep_columns=False).equals(
        predict(tmp_path / "run2", files / "old.csv", keep_columns=False))


def test_only_the_new_rows_get_a_gradient(files, star_run):
    run = load_run(star_run)
    new = read_new(files / "new.csv", run, run.config)
    grown = run.encoder.grown(new["all"])
    table = grown.transform(new["train"])
    model, masks = grow_model(run, grown, sources(run, grown, table, len(run.encoder.scenario_names)))
    assert masks["fcn.layers.0.weight_s"].flatten().tolist() == [False, False, True]
    _freeze(model, masks)
    model.train()
    model(table.batch(slice(0, 64))).sum().backward()
    for key, param in model.named_parameters():
        if key not in masks:
            assert param.grad is None, key
        else:
            assert not param.grad[~masks[key].expand_as(param.grad)].any(), key
    assert model.fcn.layers[0].weight_s.grad[2].abs().sum() > 0


def test_a_grown_hierarchy_keeps_its_ids_and_appends_new_combinations():
    import pyarrow as pa

    from msrec.data.scenarios import ScenarioCounter, grown
    from msrec.schema import Schema

    schema = Schema(sparse=["item"], dense=[], lists={}, scenario=["country", "place"], scenario_features=[],
                    labels=["y"])
    old_rows = pa.table({"country": ["US", "US", "DE"], "place": ["feed", "top", "feed"]})
    counter = ScenarioCounter(schema)
    counter.add(old_rows, "train", 0)
    old = counter.result()
    new = grown(old, pa.table({"country": ["US", "FR"], "place": ["kids", "feed"]}), schema, "new")
    assert new.names[: len(old.names)] == old.names
    assert sorted(new.names[len(old.names):]) == ["FR/feed", "US/kids"]
    assert list(new.ids(old_rows, None, "old")) == list(old.ids(old_rows, None, "old"))


def test_extend_vocab_all_grows_every_sparse_field_and_known_values_score_as_before(files, star_run, tmp_path):
    """`extend.vocab=all`: new users / items get ids of their own (appended, so known ids keep theirs); an old
    scenario's row whose values the old run knew scores bit for bit as before, a row holding a value first
    seen in NEW now reads that value's trained row instead of the unknown one."""
    old = load_run(star_run).encoder
    new_csv = pacsv.read_csv(files / "new.csv")
    extend(star_run, files / "new.csv", tmp_path / "run2", ["train.epochs=2", "extend.scratch=false",
                                                             "extend.vocab=all"])
    grown = load_run(tmp_path / "run2").encoder
    for name in ("user_id", "item_id"):
        assert grown.sparse[name].vocab[: len(old.sparse[name].vocab)] == old.sparse[name].vocab
        unseen = set(new_csv[name].to_pylist()) - set(old.sparse[name].vocab)
        assert set(grown.sparse[name].vocab[len(old.sparse[name].vocab):]) == unseen
    rows = pacsv.read_csv(files / "old.csv")
    known = functools.reduce(pc.and_, [pc.is_in(rows[name], pa.array(old.sparse[name].vocab, rows[name].type))
                                        for name in ("user_id", "item_id", "user_group", "item_category")])
    assert 0 < pc.sum(known).as_py() < rows.num_rows  # both kinds of old rows are there
    pacsv.write_csv(rows.filter(known), tmp_path / "known.csv")
    assert predict(star_run, tmp_path / "known.csv", keep_columns=False).equals(
        predict(tmp_path / "run2", tmp_path / "known.csv", keep_columns=False))


def test_the_command_prints_the_comparison_and_names_its_errors(files, star_run, cli, tmp_path):
    result = cli("extend", star_run, "--data", files / "new.csv", "--out", tmp_path / "run2",
                 "--set", "extend.scratch=false", "--set", "extend.replicates=50")
    assert result.code == 0, result.stderr
    assert "click: test AUC of the new scenarios" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith(f"│ {HELD} "))
    assert re.search(r"\d\.\d{4} │ +unknown │ +\d\.\d{4} │ +[+-]\d\.\d{4} │ \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\]",
                     row), result.stdout
    result = cli("extend", star_run, "--data", files / "old.csv", "--out", tmp_path / "run3")
    assert result.code == 1 and "no scenario unseen" in result.stderr


def test_only_the_new_rows_get_a_row_sparse_gradient(files, star_run):
    """With the stacked per-scenario parameters on row-sparse gradients (nn.routing's gather, as the row-sparse
    optimizer sets them), the hook drops the old scenarios' slices from the sparse gradient too; the batch
    holds old and new scenarios' rows, so the old slices would get one unhooked."""
    from msrec.data.table import TensorTable

    run = load_run(star_run)
    new = read_new(files / "new.csv", run, run.config)
    grown = run.encoder.grown(new["all"])
    table = grown.transform(new["train"])
    model, masks = grow_model(run, grown, sources(run, grown, table, len(run.encoder.scenario_names)))
    stacked = [p for p in model.parameters() if getattr(p, "scenario_stacked", False)]
    assert stacked
    for param in stacked:
        param.row_sparse_grad = True
    _freeze(model, masks)
    old = grown.transform(pacsv.read_csv(files / "old.csv"))
    both = TensorTable.concat([old.subset(torch.arange(64)), table.subset(torch.arange(64))])
    model.train()
    model(both.batch(torch.arange(len(both)))).sum().backward()
    sparse = [(k, p.grad.coalesce()) for k, p in model.named_parameters() if p.grad is not None and p.grad.is_sparse]
    assert sparse
    for key, grad in sparse:
        assert len(grad.indices()[0]) and bool((grad.indices()[0] >= len(run.encoder.scenario_names)).all()), key


def test_the_extensions_training_is_sized_by_the_new_rows(files, star_run, tmp_path):
    """The run trained with batches of 512 rows; the extension's batch follows NEW's training rows (about
    STEPS_PER_EPOCH steps an epoch, at least MIN_BATCH rows), unless `--set train.batch_size` says otherwise."""
    metrics = extend(star_run, files / "new.csv", tmp_path / "a", ["train.epochs=2", "extend.scratch=false"])
    rows = read_new(files / "new.csv", load_run(star_run), load_run(star_run).config)["train"].num_rows
    assert metrics["extend"]["training"]["batch_size"] == max(MIN_BATCH, min(512, rows // STEPS_PER_EPOCH)) < 512
    assert metrics["extend"]["training"]["monitor"] == "logloss" and metrics["extend"]["training"]["epochs"] == 2
    metrics = extend(star_run, files / "new.csv", tmp_path / "b",
                     ["train.epochs=1", "train.batch_size=100", "extend.scratch=false"])
    assert metrics["extend"]["training"]["batch_size"] == 100


def test_by_default_a_field_grows_when_the_new_scenario_brings_its_own_values(files, star_run, tmp_path):
    """The default `extend.vocab=auto`: NEW's users are all new (ids moved out of the old range), so user_id
    grows by every one of them; NEW's few unseen items fill far less than half of its rows, so item_id stays."""
    old = load_run(star_run).encoder
    table = pacsv.read_csv(files / "new.csv")
    table = table.set_column(table.schema.get_field_index("user_id"), "user_id", pc.add(table["user_id"], 100_000))
    pacsv.write_csv(table, tmp_path / "new_users.csv")
    extend(star_run, tmp_path / "new_users.csv", tmp_path / "run2", ["train.epochs=1", "extend.scratch=false"])
    grown = load_run(tmp_path / "run2").encoder
    assert set(grown.sparse["user_id"].vocab[len(old.sparse["user_id"].vocab):]) == set(table["user_id"].to_pylist())
    assert grown.sparse["item_id"].vocab == old.sparse["item_id"].vocab
    assert set(table["item_id"].to_pylist()) - set(old.sparse["item_id"].vocab)  # there were unseen items


def test_extend_by_a_new_country_of_a_level_shared_model(tmp_path, synthetic_config):
    """A hierarchical scenario with per-scenario parameters shared by level (star's W_country * W_placement * W_own):
    a country unseen in training gets level parts of its own, which train; the old combinations score as before."""
    from msrec.data.datasets import synthetic

    table = synthetic.generate(rows=4000, users=300, items=200, levels=[3, 2], seed=3)
    held = pc.equal(table["country"], "c2")
    pacsv.write_csv(table.filter(pc.invert(held)), tmp_path / "old.csv")
    pacsv.write_csv(table.filter(held), tmp_path / "new.csv")
    config = synthetic_config(data={"train": str(tmp_path / "old.csv"), "scenario": ["country", "placement"]},
                              model={"name": "star", "embed_dim": 4, "mlp": {"hidden": [8]}})
    del config["model"]["hidden"]
    run = train(config, out=tmp_path / "run").run_dir
    metrics = extend(run, tmp_path / "new.csv", tmp_path / "run2", ["train.epochs=2", "extend.scratch=false"])
    assert sorted(metrics["extend"]["new_scenarios"]) == ["c2/p0", "c2/p1"]
    assert predict(run, tmp_path / "old.csv", keep_columns=False).equals(
        predict(tmp_path / "run2", tmp_path / "old.csv", keep_columns=False))
    old, new = load_run(run).model.state_dict(), load_run(tmp_path / "run2").model.state_dict()
    country = "fcn.layers.0.weight_levels.parts.0"
    assert new[country].shape[0] == old[country].shape[0] + 1
    assert torch.equal(new[country][:-1], old[country])
    assert not torch.equal(new[country][-1], torch.ones_like(new[country][-1]))  # the new country's part trained


def test_replay_source_mixes_fresh_old_rows_into_every_epoch():
    """`extend.replay=R`: an epoch holds every new row once and R old rows per new one (all the old rows if
    fewer), the old ones drawn afresh each epoch."""
    from msrec.data.table import TensorTable
    from msrec.extend_data import ReplaySource

    def table(n: int, first: int) -> TensorTable:  # row i holds the id first + i
        ids = torch.arange(first, first + n).unsqueeze(1)
        return TensorTable(sparse=ids, dense=torch.zeros(n, 1), scenario=torch.zeros(n, dtype=torch.long),
                           labels=torch.zeros(n, 1), truth=torch.zeros(n, 1))

    source = ReplaySource(table(10, 0), table(100, 1000), ratio=2)
    generator = torch.Generator().manual_seed(0)
    epochs = [torch.cat([b.sparse[:, 0] for b in source.batches(7, shuffle=True, generator=generator)])
              for _ in range(2)]
    assert len(source) == 30 and source.steps(7) == 5
    for rows in epochs:
        assert len(rows) == 30 and sorted(rows[rows < 1000].tolist()) == list(range(10))
        old = rows[rows >= 1000]
        assert len(old) == 20 and len(set(old.tolist())) == 20
    assert set(epochs[0][epochs[0] >= 1000].tolist()) != set(epochs[1][epochs[1] >= 1000].tolist())
    assert len(ReplaySource(table(10, 0), table(15, 1000), ratio=2)) == 25  # every old row, none twice


def test_extend_replay_trains_the_old_scenarios_own_parameters_on_old_rows(files, star_run, tmp_path):
    """With extend.all, every parameter trains on NEW's rows; only with replay do the old scenarios' own
    parameters (STAR's per-scenario weights) get a gradient, from the replayed old rows."""
    old = load_run(star_run)
    rows = _old_training_rows(old)
    s_old = len(old.encoder.scenario_names)
    base = old.model.state_dict()["fcn.layers.0.weight_s"]
    moved = {}
    for replay in (0, 1):
        metrics = extend(star_run, files / "new.csv", tmp_path / f"r{replay}",
                         ["extend.all=true", f"extend.replay={replay}", "extend.scratch=false", "train.epochs=1"])
        grown = load_run(tmp_path / f"r{replay}").model.state_dict()["fcn.layers.0.weight_s"]
        moved[replay] = not torch.equal(grown[:s_old], base)
        new_rows = _read(files, star_run)["train"].num_rows
        assert metrics["extend"].get("replay_rows", 0) == (min(rows, new_rows) if replay else 0)
    assert moved == {0: False, 1: True}


def _old_training_rows(run) -> int:
    from msrec.extend_data import old_splits

    return old_splits(run, "test").tables["train"].num_rows


def _read(files, run_dir):
    run = load_run(run_dir)
    return read_new(files / "new.csv", run, run.config)


@pytest.mark.parametrize("phase2_better", [False, True])
def test_replay_after_the_new_entries_is_kept_only_if_it_lowers_the_validation_loss(
        files, star_run, tmp_path, monkeypatch, phase2_better):
    """`extend.replay` without extend.all: the new entries train first (old entries put back), then everything
    on new + replayed rows; the second phase is kept only when the new scenario's validation improves, else
    the model is the first phase's and the old scenarios score bit for bit as before."""
    import importlib

    verdicts = iter([1.0, 0.0] if phase2_better else [0.0, 1.0])  # phase 2's value, then phase 1's
    monkeypatch.setattr(importlib.import_module("msrec.extend"), "monitor_value", lambda report, monitor: next(verdicts))
    metrics = extend(star_run, files / "new.csv", tmp_path / "run2",
                     ["extend.replay=1", "extend.scratch=false", "train.epochs=1"])
    phase2 = metrics["extend"]["phase2"]
    lr = load_run(star_run).config.train.lr
    assert phase2["kept"] is phase2_better and phase2["training"]["lr"] == pytest.approx(REPLAY_LR * lr)
    assert metrics["extend"]["training"]["lr"] == pytest.approx(10 * lr)  # phase 1's
    same = predict(star_run, files / "old.csv", keep_columns=False).equals(
        predict(tmp_path / "run2", files / "old.csv", keep_columns=False))
    assert same is not phase2_better
    every = sum(p.numel() for p in load_run(tmp_path / "run2").model.parameters())
    assert (metrics["extend"]["trained_parameters"] == every) is phase2_better


def test_replay_errors_and_the_default_path_needs_no_old_rows(files, synthetic_config, tmp_path):
    import shutil

    shutil.copy(files / "old.csv", tmp_path / "gone.csv")
    config = synthetic_config(data={"train": str(tmp_path / "gone.csv"), "scenario_features": ["scenario"]},
                              model={"name": "star", "embed_dim": 4, "hidden": [8]}, train={"epochs": 1})
    run = train(config, out=tmp_path / "run").run_dir
    with pytest.raises(MsrecError, match="extend.replay=-1"):
        extend(run, files / "new.csv", tmp_path / "a", ["extend.replay=-1", "extend.scratch=false"])
    (tmp_path / "gone.csv").unlink()
    with pytest.raises(MsrecError, match=r"gone\.csv: the training data of the run cannot be read.*extend.replay"):
        extend(run, files / "new.csv", tmp_path / "b", ["extend.replay=1", "extend.scratch=false"])
    metrics = extend(run, files / "new.csv", tmp_path / "c", ["extend.scratch=false", "train.epochs=1"])
    assert metrics["extend"]["replay"] == 0 and "phase2" not in metrics["extend"]
