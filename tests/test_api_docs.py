"""docs/api.md lists every public name of the package with each of its parameters, so it cannot drift from
the code: a parameter added to `msrec.train` without a word in the docs fails here."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import msrec

DOC = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()


def sections() -> dict[str, str]:
    """`## `msrec.NAME(...)`` heading -> its text."""
    parts = re.split(r"^## `msrec\.(\w+)", DOC, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def parameters(obj) -> list[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    return [p for p in inspect.signature(target).parameters if p != "self"]


def test_every_public_name_has_a_section_listing_its_parameters():
    docs = sections()
    for name in msrec.__all__:
        obj = getattr(msrec, name)
        if name == "Config":  # the pydantic model: documented with load_config
            assert "`msrec.Config`" in docs["load_config"]
            continue
        assert name in docs, f"docs/api.md has no section for msrec.{name}"
        for param in parameters(obj) if callable(obj) and not issubclass_exception(obj) else []:
            body = docs[name].split("\n", 1)[1]  # the heading's signature alone does not say what it means
            assert f"`{param}`" in body, \
                f"docs/api.md: msrec.{name} does not describe its parameter `{param}`"


def test_public_methods_of_the_deployer_are_documented():
    docs = sections()["InputEncoder"]
    for method in ("encode", "table"):
        signature = inspect.signature(getattr(msrec.InputEncoder, method))
        assert f"InputEncoder.{method}(" in docs
        for param in [p for p in signature.parameters if p != "self"]:
            assert f"`{param}`" in docs


def issubclass_exception(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, BaseException)
