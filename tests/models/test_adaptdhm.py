"""adaptdhm: rows are routed to towers by their nearest centroid (their representation, not their scenario
id); the centroids move in training only and stay unit vectors; a tower learns from the rows routed to it
only, the shared centre from every row."""

import torch
import torch.nn.functional as F
from zoo_batch import bce, learns, make_batch, make_spec

from msrec.models.registry import build_model


def _model(spec=None, **options):
    torch.manual_seed(0)
    return build_model("adaptdhm", spec or make_spec(), {"mlp": {"hidden": [16, 8], "dropout": 0.0}, "clusters": 3,
                                                         **options})


def _set_centroids_to_rows(model, batch, rows):
    """Centroid k = the normalised representation of row `rows[k]`."""
    with torch.no_grad():
        u = F.normalize(model.embedding.flat(batch), dim=1)
        model.centroids.copy_(u[rows])


def test_evaluation_does_not_move_the_centroids_and_training_does():
    model = _model()
    batch = make_batch(make_spec(), [0, 1, 2] * 6)
    start = model.centroids.clone()
    with torch.no_grad():
        first, second = model.eval()(batch), model(batch)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert torch.equal(model.centroids, start)
    model.train()(batch)
    assert float((model.centroids - start).abs().max()) > 1e-3
    torch.testing.assert_close(model.centroids.norm(dim=1), torch.ones(3))


def test_rows_are_routed_to_their_nearest_centroid_not_by_scenario():
    model = _model().eval()
    batch = make_batch(make_spec(), [0, 0, 0, 1, 1, 2])  # rows 0, 1, 2 share scenario 0
    _set_centroids_to_rows(model, batch, [0, 1, 2])
    clusters = model.clusters(batch)
    assert clusters[:3].tolist() == [0, 1, 2]  # one scenario, three towers: the representation decides
    u = F.normalize(model.embedding.flat(batch), dim=1)
    assert clusters.tolist() == (u @ model.centroids.T).argmax(1).tolist()


def test_each_row_is_scored_by_its_clusters_tower():
    model = _model().eval()
    batch = make_batch(make_spec(), [0, 1, 2, 0, 1, 2, 0])
    with torch.no_grad():
        for layer in model.towers.layers:
            layer.weight_s.normal_(1.0, 0.5)  # the towers differ (they start as the shared centre)
        e = model.embedding.flat(batch)
        clusters = model.clusters(batch, e)
        out = model(batch)
        assert len(set(clusters.tolist())) > 1
        for k in range(3):
            mine = clusters == k
            torch.testing.assert_close(out[mine], model.towers.scenario_forward(k, e[mine]))


def test_a_tower_learns_from_its_rows_only_and_the_centre_from_all():
    model = _model().eval()
    batch = make_batch(make_spec(), [0, 1, 2, 0, 1, 2])
    _set_centroids_to_rows(model, batch, [0, 1, 1])  # centroids 1 and 2 equal: argmax picks 1, tower 2 gets no row
    assert 2 not in model.clusters(batch).tolist()
    bce(model, batch).backward()
    for layer in model.towers.layers:
        assert float(layer.weight_s.grad[2].abs().sum()) == 0.0
        assert float(layer.weight_s.grad[0].abs().sum()) > 0 and float(layer.weight_s.grad[1].abs().sum()) > 0
        assert float(layer.weight.grad.abs().sum()) > 0


def test_multi_task_output_both_tasks_train():
    spec = make_spec(tasks=2)
    model = _model(spec)
    batch = make_batch(spec, [0, 1, 2, 1, 0])
    assert model(batch).shape == (5, 2)
    for t in range(2):
        model.zero_grad()
        model(batch)[:, t].sum().backward()
        grad = model.towers.layers[-1].weight.grad  # the towers' shared output layer [T, in]
        assert float(grad[t].abs().sum()) > 0 and float(grad[1 - t].abs().sum()) == 0


def test_learns_on_synthetic_data():
    before, after = learns("adaptdhm")
    assert after > before + 0.08 and after > 0.6, (before, after)
