"""A small mutation checker: do the tests notice when the code is wrong?

    python tools/mutate.py                        # every module below, 45 mutants each
    python tools/mutate.py optim checkpoint -n 20 --seed 3 --timeout 120 --full

For each module it lists every mutation site in its functions, draws a sample with a fixed seed,
and runs each mutant against the tests that exercise the module (``-x``: the first failure kills
it). With ``--full``, the survivors then run against the whole default suite. A mutant that makes
the tests hang past ``--timeout`` seconds counts as killed (a hang is noticed).

Mutations (the kinds of issue 16's run):
  compare   a comparison flipped: == and !=, < and >=, <= and >, is and is not, in and not in
  constant  a number changed (0 -> 1, n -> n + 1, x -> 2x for floats) or True and False swapped
  delete    a statement replaced by ``pass`` (not imports, definitions or docstrings)
  boolean   ``and`` and ``or`` swapped, a ``not`` dropped

Nothing is written into the source tree: each mutant runs in a process forked from this one (which
has numpy, pytest and torch loaded but not xpnet); the child installs an import hook that compiles
the mutated source in place of the module's file (whatever name the module is imported under), then
runs pytest. Run it niced on a shared machine (``nice -n 10``); the exit status is 0 when no
mutant survived, 1 otherwise.
"""
import argparse
import ast
import importlib.abc
import importlib.util
import json
import os
import random
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# module name -> (its source files, the tests that exercise them)
MODULES = {
    "training": (["xpnet/training.py"], ["tests/test_training.py", "tests/test_survivors.py",
                                         "tests/test_resume.py", "tests/test_time_limit.py"]),
    "optim": (["xpnet/optim.py"], ["tests/test_optim.py", "tests/test_survivors.py",
                                   "tests/test_launches.py"]),
    "checkpoint": (["xpnet/checkpoint.py"], ["tests/test_resume.py", "tests/test_survivors.py"]),
    "ops_fast": (["xpnet/ops/fast.py", "xpnet/ops/chooser.py", "xpnet/ops/columns.py",
                  "xpnet/ops/spectral.py", "xpnet/ops/pooling.py", "xpnet/ops/geometry.py"],
                 ["tests/test_survivors.py", "tests/test_ops_fast.py", "tests/test_layers.py"]),
    "strict_backend": (["backends/strict_backend.py"], ["tests/test_backends.py",
                                                        "tests/test_survivors.py",
                                                        "tests/test_training.py",
                                                        "tests/test_launches.py"]),
    "batchnorm": (["xpnet/layers/batchnorm.py"], ["tests/test_layers.py",
                                                  "tests/test_torch_parity_layers.py",
                                                  "tests/test_survivors.py"]),
}

FLIP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.LtE: ast.Gt,
        ast.Gt: ast.LtE, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
SYMBOL = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.GtE: ">=", ast.LtE: "<=", ast.Gt: ">",
          ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}


# -- finding and applying mutations ----------------------------------------------------------------
def _inside_functions(tree):
    """Nodes that lie inside a function body (module-level code only defines names)."""
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for stmt in fn.body:
                found.extend(ast.walk(stmt))
    seen, unique = set(), []
    for node in found:   # nested functions are walked twice
        if id(node) not in seen:
            seen.add(id(node))
            unique.append(node)
    return unique


def _is_docstring(node):
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and \
        isinstance(node.value.value, str)


def _strings(tree):
    """ids of constants inside f-strings (their text is not behaviour)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            out.update(id(n) for n in ast.walk(node))
    return out


def _new_constant(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return 1 if value == 0 else (0 if value == 1 else value + 1)
    if isinstance(value, float):
        return 1.0 if value == 0 else value * 2
    return None


def sites(tree):
    """Every mutation of ``tree`` as (kind, node position in the walk, detail), in source order."""
    nodes = _inside_functions(tree)
    in_fstring = _strings(tree)
    order = {id(n): i for i, n in enumerate(ast.walk(tree))}
    out = []
    for node in nodes:
        pos = order[id(node)]
        if isinstance(node, ast.Compare):
            out += [("compare", pos, k) for k, op in enumerate(node.ops) if type(op) in FLIP]
        elif isinstance(node, ast.Constant) and id(node) not in in_fstring and \
                _new_constant(node.value) is not None:
            out.append(("constant", pos, None))
        elif isinstance(node, ast.BoolOp):
            out.append(("boolean", pos, None))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            out.append(("boolean", pos, None))
        if isinstance(node, ast.stmt) and not _is_docstring(node) and not isinstance(
                node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef,
                       ast.ClassDef, ast.Pass, ast.Global, ast.Nonlocal)):
            out.append(("delete", pos, None))
    walk = list(ast.walk(tree))
    out.sort(key=lambda s: (getattr(walk[s[1]], "lineno", 0), s[1], str(s[2])))
    return out


class _Replace(ast.NodeTransformer):
    def __init__(self, target, make):
        self.target, self.make = target, make

    def visit(self, node):
        if node is self.target:
            return self.make(node)
        return super().visit(node)


def apply(source, site):
    """(mutated source, one-line description) for ``site`` of ``source``."""
    kind, pos, detail = site
    tree = ast.parse(source)
    node = list(ast.walk(tree))[pos]
    line = getattr(node, "lineno", 0)
    text = source.splitlines()[line - 1].strip()[:80] if line else ""
    if kind == "compare":
        old = type(node.ops[detail])
        node.ops[detail] = FLIP[old]()
        what = f"{SYMBOL[old]} -> {SYMBOL[FLIP[old]]} in `{text}`"
    elif kind == "constant":
        new = _new_constant(node.value)
        what = f"{node.value!r} -> {new!r} in `{text}`"
        node.value = new
    elif kind == "boolean" and isinstance(node, ast.BoolOp):
        swap = ast.Or if isinstance(node.op, ast.And) else ast.And
        what = f"{type(node.op).__name__.lower()} -> {swap.__name__.lower()} in `{text}`"
        node.op = swap()
    elif kind == "boolean":
        what = f"drop `not` in `{text}`"
        tree = _Replace(node, lambda n: n.operand).visit(tree)
    else:
        what = f"delete `{text}`"
        tree = _Replace(node, lambda n: ast.copy_location(ast.Pass(), n)).visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree)), f"line {line}: {kind}: {what}"


# -- running a mutant ------------------------------------------------------------------------------
class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``sources[file]`` for whichever module name resolves to one of those files."""

    def __init__(self, sources):
        self.sources = {os.path.realpath(k): v for k, v in sources.items()}

    def find_spec(self, fullname, path, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.origin and os.path.realpath(spec.origin) in self.sources:
            spec.loader = self
            spec.cached = None
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        origin = os.path.realpath(module.__spec__.origin)
        exec(compile(self.sources[origin], origin, "exec"), module.__dict__)


PRELOAD = ("numpy", "pytest", "hypothesis", "torch")   # imported once; each mutant is a fork


def preload():
    """Import the heavy third-party modules in this (parent) process, never xpnet itself, so that
    each forked mutant starts with them loaded and imports xpnet fresh."""
    import importlib
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _child(sources, tests, log_fd):
    """In the forked child: serve the mutant, run pytest, exit with its status."""
    os.setsid()   # its own process group, so a timeout kills whatever the tests started
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.chdir(ROOT)
    os.environ.setdefault("XPNET_TEST_BACKENDS", "numpy,strict")
    sys.dont_write_bytecode = True
    sys.path.insert(0, ROOT)   # as ``python -m pytest`` from the root
    sys.meta_path.insert(0, _MutantFinder(sources))
    try:   # a failing property test need not be shrunk to a minimal example: the mutant is dead
        from hypothesis import Phase, settings
        settings.register_profile("mutants", phases=[Phase.explicit, Phase.reuse, Phase.generate],
                                  database=None)
        settings.load_profile("mutants")
    except ImportError:
        pass
    import pytest
    code = pytest.main(["-q", "-x", "-p", "no:cacheprovider", *tests])
    sys.stdout.flush()
    sys.stderr.flush()
    return int(code)


def run_tests(target, source, tests, timeout):
    """'killed', 'survived', 'timeout' or 'error' (the tests could not run) for one mutant:
    ``source`` in place of the file ``target`` (or a dict {file: source} for several)."""
    sources = source if isinstance(source, dict) else {target: source}
    if any(name.startswith("xpnet") for name in sys.modules):
        raise RuntimeError("tools/mutate.py must not import xpnet in the parent process")
    with tempfile.TemporaryFile() as log:
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                code = _child(sources, tests, log.fileno())
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                os._exit(code)
        deadline = time.time() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.time() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "timeout", ""
            time.sleep(0.1)
        try:
            os.killpg(pid, signal.SIGKILL)   # anything the tests left running
        except (ProcessLookupError, PermissionError):
            pass
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return "survived", text
    if code in (1, 2, 3):   # tests failed, or collection / pytest itself broke
        return "killed", text
    return "error", text


def sample(name, size, seed):
    """(all sites, the sampled ones) of module ``name``; a site is (file, source, site in it)."""
    everything = []
    for path in MODULES[name][0]:
        with open(os.path.join(ROOT, path)) as f:
            source = f.read()
        everything += [(path, source, site) for site in sites(ast.parse(source))]
    chosen = random.Random(f"{seed}:{name}").sample(range(len(everything)), min(size, len(everything)))
    return everything, [everything[i] for i in sorted(chosen)]


def describe(paths, path, what):
    return what if len(paths) == 1 else f"{os.path.basename(path)} {what}"


def check_module(name, size, seed, timeout, full, log):
    paths, tests = MODULES[name]
    missing = [p for p in paths if not os.path.isfile(os.path.join(ROOT, p))]
    if missing:
        log(f"{name}: {', '.join(missing)} does not exist; update MODULES in tools/mutate.py")
        return None
    everything, chosen = sample(name, size, seed)
    originals = {os.path.join(ROOT, p): ast.unparse(ast.parse(open(os.path.join(ROOT, p)).read()))
                 for p in paths}
    status, text = run_tests(None, originals, tests, timeout * 3)
    if status != "survived":
        log(f"{name}: the unmutated module fails its own tests ({status}); fix that first\n{text[-2000:]}")
        return None
    result = {"module": name, "files": list(paths), "sites": len(everything), "sampled": len(chosen),
              "killed": 0, "timeout": 0, "survived": [], "errors": []}
    for i, (path, source, site) in enumerate(chosen):
        mutated, what = apply(source, site)
        what = describe(paths, path, what)
        target = os.path.join(ROOT, path)
        started = time.time()
        status, text = run_tests(target, mutated, tests, timeout)
        if status == "survived" and full:
            status, text = run_tests(target, mutated, [], timeout * 10)
            what += " (whole suite)"
        if status == "survived":
            result["survived"].append(what)
        elif status == "timeout":
            result["timeout"] += 1
        elif status == "error":
            result["errors"].append(what)
        else:
            result["killed"] += 1
        log(f"{name} {i + 1}/{len(chosen)} {status:8s} {time.time() - started:5.1f}s  {what}")
    dead = result["killed"] + result["timeout"]
    result["score"] = dead / max(1, dead + len(result["survived"]))
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("modules", nargs="*", help=f"some of: {', '.join(MODULES)} (default: all)")
    p.add_argument("-n", "--sample", type=int, default=45, help="mutants per module (default 45)")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per mutant's test run")
    p.add_argument("--full", action="store_true", help="run survivors against the whole default suite")
    p.add_argument("--list", action="store_true", help="print the sampled mutants and stop")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        p.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")

    def log(message):
        print(message, flush=True)

    results = []
    if not args.list:
        preload()
    for name in args.modules or list(MODULES):
        if args.list:
            for path, source, site in sample(name, args.sample, args.seed)[1]:
                log(f"{name} {describe(MODULES[name][0], path, apply(source, site)[1])}")
            continue
        result = check_module(name, args.sample, args.seed, args.timeout, args.full, log)
        if result is not None:
            results.append(result)
    if args.list:
        return 0
    log("\nmodule            sites  sampled  killed  survived  score")
    for r in results:
        log(f"{r['module']:16s} {r['sites']:6d} {r['sampled']:8d} {r['killed'] + r['timeout']:7d} "
            f"{len(r['survived']):9d}  {r['score']:.0%}")
        for what in r["survived"]:
            log(f"    survived: {what}")
        for what in r["errors"]:
            log(f"    could not run: {what}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any(r["survived"] for r in results) or len(results) < len(args.modules or MODULES) else 0


if __name__ == "__main__":
    sys.exit(main())
