"""The numerical core never imports numpy or cupy: it gets ``xp`` from a backend."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "xpnet"
# Host-side modules that legitimately use NumPy: file formats, plotting, the CLI, `xpnet serve`.
HOST_SIDE = {"datasets", "io", "viz", "cli", "serialization", "data", "serve"}


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_core_does_not_import_array_libraries():
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0].removesuffix(".py") in HOST_SIDE:
            continue
        bad = {m for m in _imports(path) if m in ("numpy", "cupy")}
        if bad:
            offenders.append(f"{rel}: {sorted(bad)}")
    assert not offenders, "compute modules must use backend.xp, not: " + "; ".join(offenders)
    assert any(ROOT.rglob("*.py"))
