"""msrec: multi-scenario recommendation models, per-scenario evaluation, training, export and serving.

The public names are loaded on first use (PEP 562), so that `import msrec` and commands that need no model
(`msrec --help`, `msrec datasets`) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {  # public name -> "module:attribute"
    "Config": "msrec.config:Config", "load_config": "msrec.config:load_config",
    "MsrecError": "msrec.errors:MsrecError",
    "evaluate": "msrec.api:evaluate", "load_run": "msrec.runs:load_run", "predict": "msrec.api:predict",
    "predict_file": "msrec.api:predict_file",
    "prepare_data": "msrec.api:prepare_data", "train": "msrec.api:train", "extend": "msrec.extend:extend",
    "benchmark": "msrec.bench.runner:run_benchmark", "InputEncoder": "msrec.serve.inputs:InputEncoder",
}

__all__ = ["Config", "InputEncoder", "MsrecError", "benchmark", "evaluate", "extend", "load_config", "load_run", "predict",
           "predict_file", "prepare_data", "train"]

if TYPE_CHECKING:
    from msrec.api import evaluate, predict, predict_file, prepare_data, train
    from msrec.bench.runner import run_benchmark as benchmark
    from msrec.config import Config, load_config
    from msrec.errors import MsrecError
    from msrec.extend import extend
    from msrec.runs import load_run
    from msrec.serve.inputs import InputEncoder


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'msrec' has no attribute {name!r}")
    module, attribute = _LAZY[name].split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # cached: the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """`msrec.train` is the API function, as it was when this file imported it eagerly: importing the
    subpackage `msrec.train` must not bind the subpackage over it (the import system sets the attribute)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
