"""scenario_bias: the scenario-indicator features added shallow, beside the main network.

    logit = MLP_main(e) + dropout(MLP_shallow(z)),     z = [emb(indicator_1); ...; emb(indicator_k)]
                                                       (MLP_main: option `mlp`, MLP_shallow: `shallow`)

The main MLP learns what all scenarios share; the shallow tower over the indicator embeddings `z` learns
a per-scenario shift of the logit (with `z` = the scenario alone and no hidden layer it is exactly a
learned bias per scenario). Dropout on the shallow tower's *output* keeps the main network from leaning
on it: in training a dropped row is scored by the main network alone. The dropout is inverted (kept
outputs scaled by 1/(1-p)), so evaluation uses the shallow logit unscaled. Rate 1.0 turns the shallow
tower off: it is never used in training (no gradient) and so not in evaluation either, where its
untrained logit would only add noise per scenario; the model is then the main network alone.

Choices: the shallow tower reads the shared embedding table (`FeatureEmbedding.select`), so an
indicator's embedding is learned from both paths when it also enters the main network
(`indicators_in_main`, default on); with it off the main network never sees the indicators and the
scenario can only act through the shallow logit. Multi-task: both parts output one logit per task.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from msrec.data.table import Batch
from msrec.models.registry import ModelOptions, part, register
from msrec.nn import MLP, FeatureEmbedding, MLPOptions
from msrec.nn.mlp import Dropout
from msrec.schema import FeatureSpec


class ScenarioBiasOptions(ModelOptions):
    legacy = ModelOptions.legacy | {"shallow_hidden": ("shallow.hidden",), "shallow_dropout": ("logit_dropout",),
                                    "activation": ("mlp.activation", "shallow.activation")}
    search_space = ModelOptions.search_space | {"model.logit_dropout": {"low": 0.0, "high": 0.3},
                                               "model.indicators_in_main": {"choices": [True, False]}}  # tuning's (docs/tuning.md)
    mlp: MLPOptions = part([256, 128], dropout=0.2)
    """The main MLP."""
    shallow: MLPOptions = part([])
    """The shallow tower over `z`."""
    logit_dropout: float = Field(0.1, ge=0, le=1)
    """Dropout rate on the shallow tower's output logit, in training only (1.0: no shallow logit at all)."""
    indicators_in_main: bool = True
    """Whether the indicator features are also fields of the main network's input `e`."""


@register("scenario_bias", ScenarioBiasOptions,
          "Main MLP plus a shallow tower over the scenario indicators whose logit is added (with dropout)")
class ScenarioBias(nn.Module):
    def __init__(self, spec: FeatureSpec, options: ScenarioBiasOptions):
        super().__init__()
        self.scenario_fields = list(spec.scenario_fields)
        indicators = set(self.scenario_fields) if not options.indicators_in_main else set()
        keep = [i for i in range(len(spec.sparse_fields) + len(spec.list_fields)) if i not in indicators]
        self.embedding = FeatureEmbedding(spec, options.embed_dim, options.backbone, input_fields=keep)
        self.main = MLP.of(self.embedding.flat_dim, options.mlp, spec.num_tasks)
        self.shallow = MLP.of(len(self.scenario_fields) * options.embed_dim, options.shallow, spec.num_tasks)
        self.shallow_dropout = Dropout(options.logit_dropout)

    def forward(self, batch: Batch) -> Tensor:
        e = self.embedding.flat(batch)
        if self.shallow_dropout.p >= 1:  # never trained: not used in evaluation either
            return self.main(e)
        z = self.embedding.select(batch, self.scenario_fields)
        return self.main(e) + self.shallow_dropout(self.shallow(z))
