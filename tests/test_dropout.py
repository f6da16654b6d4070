"""msrec.nn.mlp.dropout: nn.Dropout's distribution (each unit kept with probability 1 - p, scaled so the
expectation is unchanged) from a cheaper CPU mask (16-bit lanes of 64-bit draws)."""

from __future__ import annotations

import pytest
import torch

from msrec.nn.mlp import MLP, Dropout, dropout

N = 1 << 20


@pytest.mark.parametrize("p", [0.2, 0.37, 0.5, 0.9])
def test_each_unit_is_kept_with_probability_one_minus_p_and_the_mean_is_unchanged(p):
    torch.manual_seed(0)
    out = dropout(torch.ones(N), p, True)
    kept = out != 0
    tolerance = 5 * (p * (1 - p) / N) ** 0.5  # five binomial standard deviations
    assert abs(kept.float().mean().item() - (1 - p)) < tolerance
    assert torch.unique(out[kept]).numel() == 1  # every kept unit scaled alike
    assert abs(out.mean().item() - 1.0) < tolerance / (1 - p)


def test_every_lane_of_a_draw_is_uniform_and_independent_of_its_neighbours():
    """Four mask values come from one 64-bit draw: each position within the draw keeps 1 - p of its units (the
    sign lane included), and neighbours are uncorrelated."""
    torch.manual_seed(1)
    p = 0.5
    kept = (dropout(torch.ones(N), p, True) != 0).float().view(-1, 4)
    tolerance = 5 * (p * (1 - p) / (N // 4)) ** 0.5
    for lane in range(4):
        assert abs(kept[:, lane].mean().item() - (1 - p)) < tolerance, lane
    flat = kept.flatten()
    correlation = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()
    assert abs(correlation) < 0.01


def test_gradient_flows_through_the_kept_units_with_their_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    out = dropout(x, 0.3, True)
    out.sum().backward()
    scale = out[out != 0] / x.detach()[out != 0]
    torch.testing.assert_close(x.grad[out != 0], scale)
    assert (x.grad[out == 0] == 0).all()


def test_evaluation_no_dropout_and_full_dropout():
    x = torch.randn(10, 7)
    assert dropout(x, 0.4, False) is x
    assert dropout(x, 0.0, True) is x
    assert (dropout(x, 1.0, True) == 0).all()


def test_the_same_seed_draws_the_same_mask():
    x = torch.randn(100, 50)
    torch.manual_seed(3)
    first = dropout(x, 0.2, True)
    torch.manual_seed(3)
    torch.testing.assert_close(dropout(x, 0.2, True), first, rtol=0, atol=0)


def test_mlps_use_it_and_it_is_still_an_nn_dropout():
    mlp = MLP(8, [16], 1, dropout=0.25)
    layers = [m for m in mlp.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(layers) == 1 and isinstance(layers[0], Dropout) and layers[0].p == 0.25
