"""First contact with the command: `--help` and `datasets` import no torch (lazy package attributes), `msrec
models NAME` prints a model's options from its options class, and the public names still work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from msrec.models.registry import describe_options, list_models


def imported_modules(*args: str) -> list[str]:
    """The modules `python -X importtime -m msrec ARGS` imports, read from its stderr."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "msrec", *args], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]


@pytest.mark.parametrize("args", [["--help"], ["datasets"], ["train", "--help"], ["serve", "--help"], ["tune", "--help"]])
def test_commands_that_need_no_model_import_no_torch(args):
    modules = imported_modules(*args)
    assert "msrec.cli" in modules  # the parse worked: the command really ran
    heavy = [m for m in modules if m.split(".")[0] in ("torch", "optuna", "mlflow", "tensorboard")]
    assert not heavy, f"msrec {' '.join(args)} imports {heavy[:5]}"


def test_public_names_load_on_first_use_and_train_stays_the_function():
    """`msrec.train` is the API function even after the subpackage `msrec.train` is imported (which the
    import system binds on the package), as it was when `msrec/__init__.py` imported everything."""
    code = ("import sys, msrec\n"
            "assert 'torch' not in sys.modules\n"
            "import msrec.train.trainer\n"
            "from msrec import train, load_run, Config, MsrecError, __version__\n"
            "assert callable(msrec.train) and msrec.train is train and train.__module__ == 'msrec.api'\n"
            "assert msrec.benchmark.__name__ == 'run_benchmark'\n"
            "assert set(msrec.__all__) <= set(dir(msrec))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_an_unknown_public_name_is_an_attribute_error():
    import msrec

    with pytest.raises(AttributeError, match="nope"):
        msrec.nope  # noqa: B018


def test_models_lists_every_model_and_says_how_to_see_options(cli):
    result = cli("models")
    assert result.code == 0, result.stderr
    for entry in list_models():
        assert entry.name in result.stdout
    assert "msrec models NAME" in result.stdout


@pytest.mark.parametrize("name", ["star", "ple"])
def test_models_name_prints_each_option_with_its_default_and_meaning(cli, name):
    result = cli("models", name)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    for key, type_, _default, meaning in describe_options(name):
        line = next((i for i, text in enumerate(lines) if text.strip().startswith(f"{key}:")), None)
        assert line is not None, f"{key} not printed"
        assert type_ in lines[line] and meaning[:30] in lines[line + 1]
    assert any(line.strip() == "mlp.hidden: [256, 128]  (list[int])" for line in lines) or name != "star"


def test_models_with_an_unknown_name_lists_the_known_ones(cli):
    result = cli("models", "stra")
    assert result.code == 1
    assert "stra" in result.stderr and "star" in result.stderr and "dnn" in result.stderr
