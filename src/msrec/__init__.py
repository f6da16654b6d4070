"""msrec: multi-scenario recommendation models, per-scenario evaluation, training, export and serving."""

__version__ = "0.1.0"

from msrec.api import evaluate, load_run, predict, prepare_data, train
from msrec.config import Config, load_config
from msrec.errors import MsrecError
from msrec.report.benchmark import run_benchmark as benchmark

__all__ = ["Config", "MsrecError", "benchmark",
           "evaluate", "load_config", "load_run", "predict", "prepare_data", "train"]
