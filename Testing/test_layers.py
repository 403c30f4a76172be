"""The Lib's imports point down only (README, Architecture): a module may import its own package and the
layers below it, never one above. Read from the source with ast, so lazy imports inside functions count too."""
import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "DiffusionRegistration" / "DiffusionRegistrationLib"
# top -> bottom; the base modules (errors, progress) share a rank. The command line sits above the MRML
# layer: `diffreg review` shows the review session (slicer/session.py) in a browser.
LAYERS = [("cli",), ("slicer",), ("api",), ("network",), ("engine",), ("similarity",), ("features",), ("geometry",),
          ("io",), ("core", "errors", "progress")]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _imports(path: Path):
    """(top-level part of the Lib that is imported, line) for every relative import in `path`."""
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    package = parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [node.names[0].name])
            yield target[0], node.lineno


def test_every_relative_import_points_down_or_stays_in_its_package():
    upward = []
    for path in LIB.rglob("*.py"):
        layer = path.relative_to(LIB).parts[0].removesuffix(".py")
        if layer in ("__init__", "__main__"):
            continue  # the package root's lazy exports and `python -m` entry sit above everything
        assert layer in RANK, f"{layer} is in no layer: add it to LAYERS and to the README's Architecture"
        for target, line in _imports(path):
            if target != layer and RANK[target] < RANK[layer]:
                upward.append(f"{path.relative_to(LIB)}:{line} imports {target}")
            if target != layer and RANK[target] == RANK[layer]:
                upward.append(f"{path.relative_to(LIB)}:{line} imports its sibling front end {target}")
    assert not upward, upward
