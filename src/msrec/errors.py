"""One error type for everything a user can get wrong, so the CLI can print one clear line."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class MsrecError(Exception):
    """A problem with the user's input (data, config, run directory): the message names what is at fault."""


def first_problem(err: ValidationError) -> tuple[str, bool, str]:
    """(dotted field path, whether the field is unknown, message) of pydantic's first error: every place that
    validates user input reports one line in the same words."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return where, first["type"] == "extra_forbidden", first["msg"].removeprefix("Value error, ")
