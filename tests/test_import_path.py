"""``backends/`` has one name, ``xpnet.backends``: one copy of the strict backend and its counters.

A second copy (``import backends`` with the repository root on ``sys.path``) once let two sync tests
assert on counters nothing incremented."""
import importlib
import os
import pathlib
import subprocess
import sys

import pytest

import xpnet

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ["tests", "benchmarks", "examples", "xpnet", "backends"]


def test_one_copy_of_the_strict_backend_after_the_suites_imports():
    import xpnet.backends.strict_backend as strict
    for path in sorted((ROOT / "tests").glob("test_*.py")):  # the suite's own imports, all of them
        __import__("tests." + path.stem)
    copies = sorted(name for name, module in list(sys.modules.items())
                    if module is not None and name.endswith("strict_backend"))
    assert copies == ["xpnet.backends.strict_backend"], copies
    assert "backends" not in sys.modules
    backend = xpnet.get_backend("strict")  # the library's strict backend counts into that one copy
    before = dict(strict.COUNTERS)
    backend.to_numpy(backend.asarray([1.0, 2.0]).sum())
    assert strict.COUNTERS["h2d"] == before["h2d"] + 1 and strict.COUNTERS["syncs"] == before["syncs"] + 1


def test_plain_backends_import_is_refused():
    sys.path.insert(0, str(ROOT))
    try:
        with pytest.raises(ImportError, match="xpnet.backends"):
            importlib.import_module("backends")
    finally:
        sys.path.remove(str(ROOT))
        sys.modules.pop("backends", None)


@pytest.mark.parametrize("folder", SOURCES)
def test_sources_name_the_backends_xpnet_backends(folder):
    offenders = []
    for path in (ROOT / folder).rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = line.split()
            if words[:2] in (["from", "backends"], ["import", "backends"]) or \
                    (words[:1] in (["from"], ["import"]) and words[1:2] and words[1].startswith("backends.")):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "import xpnet.backends, not backends: " + "; ".join(offenders)


def test_uninstalled_checkout_maps_only_the_backends():
    """Without the installed package's finder, the checkout's xpnet still reaches xpnet.backends (and
    through it nothing else of the repository: no xpnet.tests, no xpnet.benchmarks)."""
    code = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "sys.path_importer_cache.clear()\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import xpnet, xpnet.backends.strict_backend as s\n"
        "print(s.__file__)\n"
        "for name in ('xpnet.tests', 'xpnet.benchmarks', 'xpnet.examples'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "        print('importable', name)\n"
        "    except ImportError:\n"
        "        pass\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(ROOT / "backends" / "strict_backend.py")], out.stdout
