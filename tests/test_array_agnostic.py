"""The numerical core never imports numpy or cupy: it gets ``xp`` from a backend."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "xpnet"
# Host-side modules that legitimately use NumPy: file formats (ONNX export too), plotting, the CLI,
# `xpnet serve`, image preprocessing, the finite-difference checker for users' layers.
HOST_SIDE = {"datasets", "io", "viz", "cli", "serialization", "data", "serve", "onnx_export", "preprocess",
             "testing"}


def _imports(path):
    """Top-level modules imported, and names imported from anywhere (``from ..backends.numpy_backend
    import numpy`` is NumPy too)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.module and node.level == 0:
                yield node.module.split(".")[0]
            yield from (a.name for a in node.names)


def test_core_does_not_import_array_libraries():
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0].removesuffix(".py") in HOST_SIDE:
            continue
        bad = {m for m in _imports(path) if m in ("numpy", "cupy")}
        if rel.as_posix() == "distributed/nccl.py" and set(_full_imports(path)) & {"cupy", "numpy"} == set():
            bad.discard("cupy")  # only `from cupy.cuda import nccl`: the NCCL communicator's library
        if bad:
            offenders.append(f"{rel}: {sorted(bad)}")
    assert not offenders, "compute modules must use backend.xp, not: " + "; ".join(offenders)
    assert any(ROOT.rglob("*.py"))


def _full_imports(path):
    """Every imported module by its full dotted name (``from a.b import c`` gives a.b and a.b.c)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def test_only_distributed_imports_mpi_and_nccl():
    """mpi4py and NCCL are xpnet.distributed's business alone (the backends included)."""
    offenders, found = [], set()
    for path in list(ROOT.rglob("*.py")) + list((ROOT.parent / "backends").rglob("*.py")):
        names = {m for m in _full_imports(path) if m.split(".")[0] == "mpi4py" or
                 m.startswith("cupy.cuda.nccl") or m.startswith("cupyx.distributed")}
        if path.parent.name == "distributed" and path.parent.parent == ROOT:
            found |= names
        elif names:
            offenders.append(f"{path}: {sorted(names)}")
    assert not offenders, "only xpnet/distributed/ may import mpi4py or NCCL: " + "; ".join(offenders)
    assert {"mpi4py", "cupy.cuda.nccl"} <= found  # the check sees the imports where they are


LIBRARY_WORDS = ("numpy", "cupy", "strictarray")


def _string_checks(path):
    """Lines where code outside backends/ tells array libraries apart by name: a comparison or
    membership test, or a startswith/endswith, against a string naming numpy / cupy / StrictArray,
    and any look at ``__module__`` (how a class's library is guessed)."""
    tree = ast.parse(path.read_text())

    def names_library(node):
        return any(isinstance(n, ast.Constant) and isinstance(n.value, str) and
                   any(w in n.value.lower() for w in LIBRARY_WORDS) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and names_library(node):
            yield node.lineno
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("startswith", "endswith") and names_library(node):
            yield node.lineno
        elif isinstance(node, ast.Attribute) and node.attr == "__module__":
            yield node.lineno


def test_array_library_checks_by_name_live_in_backends():
    offenders = []
    for path in ROOT.rglob("*.py"):  # all of xpnet/, host side included: backends/ is the only place
        offenders += [f"{path.relative_to(ROOT)}:{line}" for line in _string_checks(path)]
    assert not offenders, ("numpy/cupy distinctions belong in backends/ (Backend.owns, "
                           "Backend.is_out_of_memory, backend_of): " + ", ".join(offenders))
    backends = ROOT.parent / "backends"
    assert any(True for p in backends.rglob("*.py") for _ in _string_checks(p))  # the check sees them
