"""Building blocks shared by the models."""

from msrec.nn.embedding import FeatureEmbedding
from msrec.nn.mlp import MLP, MLPOptions
from msrec.nn.routing import ScenarioRouting

__all__ = ["MLP", "FeatureEmbedding", "MLPOptions", "ScenarioRouting"]
