"""Column roles (what the user declared) and the feature layout models are built from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from msrec.errors import MsrecError


@dataclass
class Schema:
    """Which column plays which role. Scenario-indicator features are sparse fields too: models read them
    from `Batch.sparse` at the indices `FeatureSpec.scenario_fields` gives. `scenario` is one column, or
    several (`[country, placement]`: the scenario is their combination, see `ScenarioLevels`)."""

    sparse: list[str]
    dense: list[str]
    lists: dict[str, str]
    scenario: str | list[str]
    scenario_features: list[str]
    labels: list[str]
    user: str | None = None
    truth: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.scenario, list | tuple) and len(self.scenario) == 1:
            self.scenario = self.scenario[0]  # [x] is x: a single column stays exactly as it was
        if isinstance(self.scenario, list | tuple):
            self.scenario = list(self.scenario)
            if not all(isinstance(c, str) and c for c in self.scenario) or len(set(self.scenario)) < len(self.scenario):
                raise MsrecError(f"data.scenario: expected distinct column names, got {self.scenario}")
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

    @property
    def scenario_columns(self) -> list[str]:
        """The scenario's columns, one per level (one for a flat scenario)."""
        return [self.scenario] if isinstance(self.scenario, str) else list(self.scenario)

    def feature_columns(self) -> list[str]:
        return list(dict.fromkeys([*self.sparse, *self.dense, *self.lists, *self.scenario_columns]))

    def text_columns(self) -> list[str]:
        """Columns read from CSV as text: ids keep their form ("007" stays "007"), lists stay strings."""
        return list(dict.fromkeys([*self.sparse, *self.lists, *self.scenario_columns,
                                   *([self.user] if self.user else [])]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScenarioLevels:
    """The levels of a scenario: scenario id s is the combination whose level-l value is `values[l][ids[s][l] - 1]`.

    Level ids are 1-based like sparse ids; 0 means "none": the combination fell back to its parent level
    (`data.min_scenario_rows`), e.g. `US/*` has the country level only. A model gathers per-level parameters
    with `tensor()` (`[S, L]`); a table of `sizes[l]` rows per level holds every id, 0 included. A flat
    scenario is one level whose ids are the scenario ids plus one."""

    columns: list[str]
    values: list[list[str]]  # per level, the names of its ids 1..n
    ids: list[list[int]]  # [S][L]

    @property
    def sizes(self) -> list[int]:
        return [len(v) + 1 for v in self.values]

    def tensor(self) -> Any:
        import torch  # lazily: a schema is read before torch is needed

        return torch.tensor(self.ids, dtype=torch.long).reshape(len(self.ids), len(self.columns))


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
    levels: ScenarioLevels | None = None  # None: a flat scenario (`scenario_levels` sees it as one level)

    @property
    def scenario_levels(self) -> ScenarioLevels:
        """The scenario's levels: those of a hierarchical scenario, or one level of the scenarios themselves."""
        if self.levels is not None:
            return self.levels
        return ScenarioLevels(["scenario"], [list(self.scenarios)], [[s + 1] for s in range(len(self.scenarios))])

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
