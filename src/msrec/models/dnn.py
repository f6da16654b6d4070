"""dnn: the shared baseline.

    logit = MLP(e),   e = [emb(field_1); ...; emb(field_F); dense]

The scenario id is an ordinary sparse field (it is a scenario-indicator feature), so one parameter set
serves every scenario and the big scenarios dominate its loss. Multi-task: one output per task on the
same MLP.
"""

from __future__ import annotations

from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, register
from msrec.nn import MLP, FeatureEmbedding
from msrec.schema import FeatureSpec


class DNNOptions(ModelOptions):
    pass


@register("dnn", DNNOptions, "One shared MLP over all features, the scenario as an ordinary feature (baseline)")
class DNN(nn.Module):
    def __init__(self, spec: FeatureSpec, options: DNNOptions):
        super().__init__()
        self.embedding = FeatureEmbedding(spec, options.embed_dim, options.backbone)
        self.mlp = MLP.of(self.embedding.flat_dim, options.mlp, spec.num_tasks)

    def forward(self, batch: Batch) -> Tensor:
        return self.mlp(self.embedding.flat(batch))
