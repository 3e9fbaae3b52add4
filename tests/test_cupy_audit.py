"""CuPy namespace audit: every ``xp.<name>`` the library uses, and every array method or attribute
it touches, exists in CuPy, so a NumPy-only function cannot creep in unnoticed.

No GPU is needed: ``import cupy`` works without a driver (only device calls fail). CI installs
the CuPy wheel without its CUDA libraries for this (`pip install --no-deps cupy-cuda13x
cuda-pathfinder`, see .ci/run) and runs ``pytest -m cupy_audit``; without CuPy these tests skip.

The scan is static (Python's ast) over xpnet/ and backends/, except the four files that are
NumPy-only by design (the NumPy and strict backends, the NumPy kernels, and the compiled spectral
products, which call NumPy's own BLAS on the addresses of NumPy arrays):
  * namespace: each attribute chain that starts at ``xp`` (``xp.fft.rfft``, ``self.xp.zeros``,
    ``backend.xp.float32``, ``xp.add.at``) must resolve on the ``cupy`` module;
  * arrays: each attribute name used anywhere that is an attribute of ``numpy.ndarray`` must also
    be one of ``cupy.ndarray`` (an over-approximation: a name used on another object counts too).
"""
import ast
import importlib.util
import os

import numpy as np
import pytest

from .helpers import skip_unless_required

pytestmark = pytest.mark.cupy_audit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMPY_ONLY = {"backends/numpy_backend.py", "backends/numpy_kernels.py", "backends/strict_backend.py",
              "backends/compiled_products.py"}


def import_cupy():
    if importlib.util.find_spec("cupy") is None:
        skip_unless_required("CuPy is not installed; the audit needs only its wheel, no GPU: "
                    "pip install --no-deps cupy-cuda13x cuda-pathfinder")
    import cupy
    return cupy


def library_files():
    out = []
    for top in ("xpnet", "backends"):
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for name in names:
                path = os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")
                if name.endswith(".py") and path not in NUMPY_ONLY:
                    out.append(path)
    return sorted(out)


def scan(source, where):
    """({chain after xp: [places]}, {attribute name: [places]}) of one module's source."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    chains, attrs = {}, {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        place = f"{where}:{node.lineno}"
        attrs.setdefault(node.attr, []).append(place)
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            continue  # not the outermost attribute of its chain
        parts, inner = [], node
        while isinstance(inner, ast.Attribute):
            parts.append(inner.attr)
            inner = inner.value
        if isinstance(inner, ast.Name):
            parts.append(inner.id)
        parts.reverse()
        if "xp" in parts[:-1]:
            chain = tuple(parts[parts.index("xp") + 1:])
            chains.setdefault(chain, []).append(place)
    return chains, attrs


def scan_library():
    chains, attrs = {}, {}
    for path in library_files():
        with open(os.path.join(ROOT, path)) as f:
            c, a = scan(f.read(), path)
        for k, v in c.items():
            chains.setdefault(k, []).extend(v)
        for k, v in a.items():
            attrs.setdefault(k, []).extend(v)
    return chains, attrs


def missing_in(cupy, chains, attrs):
    """Readable lines for each name CuPy lacks."""
    lines = []
    for chain, places in sorted(chains.items()):
        obj = cupy
        for i, name in enumerate(chain):
            if not hasattr(obj, name):
                lines.append(f"xp.{'.'.join(chain)}: cupy has no {'.'.join(('cupy',) + chain[:i + 1])} "
                             f"(used at {', '.join(places[:3])})")
                break
            obj = getattr(obj, name)
    array_names = {n for n in dir(np.ndarray) if not n.startswith("__")}
    for name, places in sorted(attrs.items()):
        if name in array_names and not hasattr(cupy.ndarray, name):
            lines.append(f"array .{name}: numpy.ndarray has it, cupy.ndarray does not "
                         f"(used at {', '.join(places[:3])})")
    return lines


def test_the_scan_sees_the_library():
    chains, attrs = scan_library()
    files = library_files()
    assert "backends/random.py" in files and "xpnet/ops/fast.py" in files
    assert not NUMPY_ONLY & set(files)
    # a few uses that must be found, or the scan is broken
    for chain in (("zeros",), ("uint64",), ("float32",), ("log1p",), ("cuda", "runtime", "memGetInfo")):
        assert chain in chains, chain
    for name in ("astype", "reshape", "view", "sum"):
        assert name in attrs, name
    assert len(chains) > 30


def test_every_xp_name_and_array_method_exists_in_cupy():
    cupy = import_cupy()
    chains, attrs = scan_library()
    problems = missing_in(cupy, chains, attrs)
    assert not problems, "NumPy-only names in the library:\n" + "\n".join(problems)


def test_the_audit_catches_a_numpy_only_name():
    cupy = import_cupy()
    chains, attrs = scan("def f(xp, a, backend):\n"
                         "    a.setflags(write=False)\n"
                         "    return xp.busday_count(a) + backend.xp.lib.scimath.sqrt(a) + xp.exp(a)\n",
                         "planted.py")
    problems = missing_in(cupy, chains, attrs)
    assert any(p.startswith("xp.busday_count: cupy has no cupy.busday_count") for p in problems)
    assert any(p.startswith("xp.lib.scimath.sqrt:") for p in problems)
    assert any(p.startswith("array .setflags:") and "planted.py:2" in p for p in problems)
    assert not any(p.startswith("xp.exp") for p in problems)
