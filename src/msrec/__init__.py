"""msrec: multi-scenario recommendation models, per-scenario evaluation, training, export and serving."""

__version__ = "0.1.0"

from msrec.api import evaluate, load_run, predict, prepare_data, train  # noqa: E402
from msrec.config import Config, load_config  # noqa: E402
from msrec.errors import MsrecError  # noqa: E402
from msrec.report.benchmark import run_benchmark as benchmark  # noqa: E402

__all__ = ["Config", "MsrecError", "benchmark",
           "evaluate", "load_config", "load_run", "predict", "prepare_data", "train"]
