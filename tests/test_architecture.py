"""docs/architecture.md matches the code: every room it names exists, each source file belongs to a room,
and no module imports a room its row does not allow (imports for type checking only are not dependencies)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "msrec"
MAX_LINES = 350


def rooms() -> dict[str, set[str]]:
    """room -> the rooms it may import, from the table under "## The rooms"."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## The rooms", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        match = re.match(r"\| `([\w./]+)` \|[^|]*\|([^|]*)\|$", line.strip())
        if match:
            name = match.group(1).removesuffix("/").removesuffix(".py")
            out[name] = {r.strip() for r in match.group(2).split(",") if r.strip()}
    return out


def room_of(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Line numbers of imports under `if TYPE_CHECKING:`."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imported_rooms(path: Path) -> dict[str, int]:
    """msrec rooms a file imports (anywhere in it, lazy imports included) -> the first line."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "msrec" else [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "msrec" and len(parts) > 1 and (SRC / parts[1]).exists() or \
                    parts[0] == "msrec" and len(parts) > 1 and (SRC / f"{parts[1]}.py").exists():
                found.setdefault(parts[1], node.lineno)
    return found


def test_every_room_named_exists_and_every_file_has_a_room():
    table = rooms()
    assert len(table) >= 10
    for name in table:
        assert (SRC / name).is_dir() or (SRC / f"{name}.py").is_file(), f"docs/architecture.md names `{name}`"
    for path in SRC.rglob("*.py"):
        assert room_of(path) in table, f"{path.relative_to(REPO)} belongs to no room of docs/architecture.md"


def test_imports_follow_the_rooms():
    table = rooms()
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        here = room_of(path)
        for target, line in imported_rooms(path).items():
            if target != here and target not in table[here]:
                problems.append(f"{path.relative_to(REPO)}:{line}: {here} imports {target}")
    assert not problems, "\n".join(problems)


def test_no_source_file_is_longer_than_the_limit():
    long = [f"{p.relative_to(REPO)}: {n}" for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, long


def test_the_rules_catch_a_forbidden_import(tmp_path):
    """The check itself can fail: a file importing a room above it is found."""
    path = SRC / "train" / "trainer.py"
    tree_rooms = imported_rooms(path)
    assert "models" not in tree_rooms
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from msrec.models.registry import build_model\n")
    assert "models" in imported_rooms(fake)
