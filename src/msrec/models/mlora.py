"""mlora: a shared MLP whose hidden layers each carry a low-rank adapter per scenario (MLoRA).

    h_0 = e                                  the pooled, concatenated embeddings
    h_i = act(h_{i-1} (W_i + B_s,i A_s,i)^T + b_i + b_s,i)     scenario s's adapter on the shared layer i
    logit = h_L W_out^T + b_out               shared output layer

Yang et al., "MLoRA: Multi-Domain Low-Rank Adaptive Network for Click-Through Rate Prediction" (RecSys 2024,
deployed at Alibaba.com): per-domain LoRA modules on a shared backbone, so a domain's own part is a low-rank
change of the shared weights, not a copy of them. Each scenario owns r x (in + out) + out numbers per layer
(STAR owns out x in), which keeps its part trainable from few rows and keeps a step's cost independent of
the number of scenarios: the adapters run through `ScenarioRouting` on the scenario's own rows.

Choices: the rank of a layer of width w is `rank`, or w / `rank_reduce` (the public code's `lora_reduce`,
default 16: ranks 16 and 8 for [256, 128]); `A_s` drawn as a linear layer's weight and `B_s`, `b_s` zeros
(LoRA's initialisation: training starts from the shared MLP); the output layer is shared (the public code's);
dropout after each hidden activation, as every msrec MLP (the public code drops the shared branch's output
before adding the adapter's); shared and adapter parts train together (the public code's default; its
pretrain-then-freeze variants are not built); no normalization (the public configs' `norm: none`).
A hierarchical scenario composes each combination's adapter factors from its level values' (nn.lora).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated

from pydantic import Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register, without_batch_norm
from msrec.nn import FeatureEmbedding, MLPOptions, ScenarioRouting
from msrec.nn.levels import LevelSharingOptions, shared_levels
from msrec.nn.lora import ScenarioLoRALinear, lora_rank
from msrec.nn.mlp import ACTIVATIONS, Dropout
from msrec.schema import FeatureSpec


class MLoRAOptions(LevelSharingOptions, ModelOptions):
    search_space = ModelOptions.search_space | {"model.rank_reduce": {"choices": [4, 8, 16, 32]}}
    mlp: Annotated[MLPOptions, without_batch_norm("the adapted layers have no normalization")] = part(
        [256, 128], dropout=0.2)
    """The shared MLP whose hidden layers carry the adapters."""
    rank: int | None = Field(None, ge=1)
    """Adapter rank of every hidden layer (default: each layer's width / `rank_reduce`)."""
    rank_reduce: int = Field(16, ge=1)
    """A hidden layer of width w gets adapters of rank w / rank_reduce (at least 1) unless `rank` is set."""


@register("mlora", MLoRAOptions, "Shared MLP with a low-rank adapter per scenario on each hidden layer (MLoRA)")
class MLoRA(nn.Module):
    def __init__(self, spec: FeatureSpec, options: MLoRAOptions):
        super().__init__()
        self.num_scenarios = spec.num_scenarios
        self.embedding = FeatureEmbedding(spec, options.embed_dim, options.backbone)
        dims = [self.embedding.flat_dim, *options.mlp.hidden]
        levels = shared_levels(spec, options)
        self.layers = nn.ModuleList(
            ScenarioLoRALinear(a, b, lora_rank(b, options.rank, options.rank_reduce), spec.num_scenarios, levels,
                               options.combination_part)
            for a, b in pairwise(dims))
        self.act = ACTIVATIONS[options.mlp.activation]()
        self.dropout = Dropout(options.mlp.dropout)  # its rate; applied over tiles by routing.dropout
        self.out = nn.Linear(dims[-1], spec.num_tasks)

    def forward(self, batch: Batch) -> Tensor:
        routing = ScenarioRouting.of(batch, self.num_scenarios)
        h = routing.pack(self.embedding.flat(batch))
        for layer in self.layers:
            h = routing.dropout(self.act(layer(h, routing)), self.dropout.p, self.training)
        return self.out(routing.unpack(h))
