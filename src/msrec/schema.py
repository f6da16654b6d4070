"""Column roles (what the user declared) and the feature layout models are built from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from msrec.errors import MsrecError


@dataclass
class Schema:
    """Which column plays which role. Scenario-indicator features are sparse fields too: models read them
    from `Batch.sparse` at the indices `FeatureSpec.scenario_fields` gives."""

    sparse: list[str]
    dense: list[str]
    lists: dict[str, str]
    scenario: str
    scenario_features: list[str]
    labels: list[str]
    user: str | None = None
    truth: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.scenario:
            raise MsrecError("data.scenario: name the column whose values are the scenarios")
        if not self.labels:
            raise MsrecError("data.labels: name at least one label column")
        # Scenario indicator features that are not also listed as sparse features join the sparse fields.
        self.sparse = list(dict.fromkeys([*self.sparse, *self.scenario_features]))
        if not self.sparse and not self.dense and not self.lists:
            raise MsrecError("data: declare at least one feature (sparse, dense or lists)")
        seen: dict[str, str] = {}
        for role, cols in (("sparse", self.sparse), ("dense", self.dense), ("lists", list(self.lists)),
                           ("labels", self.labels)):
            for c in cols:
                if c in seen:
                    raise MsrecError(f"data: column `{c}` is declared both as {seen[c]} and as {role}")
                seen[c] = role
        unknown_truth = set(self.truth) - set(self.labels)
        if unknown_truth:
            raise MsrecError(f"data.truth: {sorted(unknown_truth)} are not labels")

    def feature_columns(self) -> list[str]:
        return list(dict.fromkeys([*self.sparse, *self.dense, *self.lists, self.scenario]))

    def text_columns(self) -> list[str]:
        """Columns read from CSV as text: ids keep their form ("007" stays "007"), lists stay strings."""
        return list(dict.fromkeys([*self.sparse, *self.lists, self.scenario, *([self.user] if self.user else [])]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FeatureSpec:
    """What a model needs to know about its inputs: field names and vocabulary sizes, dense width,
    which sparse fields describe the scenario, the scenarios and the tasks."""

    sparse_fields: list[str]
    sparse_vocab: list[int]
    list_fields: list[str]
    list_vocab: list[int]
    dense_dim: int
    scenario_fields: list[int]
    scenarios: list[str]
    tasks: list[str]

    @property
    def num_scenarios(self) -> int:
        return len(self.scenarios)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_fields(self) -> int:
        """Embedded fields: sparse ids plus pooled lists."""
        return len(self.sparse_fields) + len(self.list_fields)

    def sparse_index(self, name: str) -> int:
        if name not in self.sparse_fields:
            raise MsrecError(f"model: `{name}` is not a sparse feature (sparse features: {self.sparse_fields})")
        return self.sparse_fields.index(name)
