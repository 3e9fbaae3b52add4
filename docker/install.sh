#!/usr/bin/env bash
# Install xpnet from this checkout with the extras for one target: cpu, cuda12 or cuda13.
#
#   docker/install.sh [--dry-run] [--editable] [cpu|cuda12|cuda13]
#
# The target may also come from $XPNET_TARGET (default cpu). Other settings:
#   PYTHON        interpreter whose pip installs xpnet (default: python3)
#   XPNET_EXTRAS  extras added to the target's, comma separated (default: plot; "" for none)
#   XPNET_DRY_RUN=1  print the commands instead of running them (same as --dry-run)
# cuda12 adds the extra `cuda12` (cupy-cuda12x[ctk]: CuPy with its CUDA libraries), cuda13 adds `cuda13`
# (cupy-cuda13x[ctk]), cpu adds `compiled` (numba: the CPU's compiled max-pooling kernels,
# backends/compiled.py; the GPU targets do not need it).
# Used by docker/Dockerfile.gpu and docker/Dockerfile.cpu; runs the same way outside Docker.
set -euo pipefail

usage() {
    # The comment lines after the shebang, up to the first other line, whatever their number.
    sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"
}

die() {
    echo "install.sh: $*" >&2
    exit 2
}

target="${XPNET_TARGET:-cpu}"
dry_run="${XPNET_DRY_RUN:-0}"
editable=0
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --editable) editable=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option '$1' (expected --dry-run, --editable or --help)" ;;
        *) target="$1" ;;
    esac
    shift
done

case "$target" in
    cpu) gpu_extra=""; target_extra="compiled" ;;
    cuda12|cuda13) gpu_extra="$target"; target_extra="$target" ;;
    *) die "unknown target '$target' (expected cpu, cuda12 or cuda13)" ;;
esac

python="${PYTHON:-python3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$root/pyproject.toml" ] || die "no pyproject.toml in $root (run this script from an xpnet checkout)"

extras="$target_extra"
more="${XPNET_EXTRAS-plot}"
if [ -n "$more" ]; then
    extras="${extras:+$extras,}$more"
fi
spec="$root"
if [ -n "$extras" ]; then
    spec="$root[$extras]"
fi

pip_cmd=("$python" -m pip install --no-cache-dir)
if [ "$editable" = 1 ]; then
    pip_cmd+=(-e)
fi
pip_cmd+=("$spec")
check_cmd=("$python" -c "import xpnet; print('xpnet', xpnet.__version__, 'installed; backends here:', ', '.join(xpnet.available_backends()))")
if [ -n "$gpu_extra" ]; then
    # No GPU is needed for this: importing CuPy does not touch the device.
    check_cmd=("$python" -c "import cupy, xpnet; print('xpnet', xpnet.__version__, 'with CuPy', cupy.__version__)")
fi

run() {
    if [ "$dry_run" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

mode="install"
if [ "$dry_run" = 1 ]; then
    mode="dry run"
fi
echo "install.sh ($mode): target=$target extras=${extras:-none} python=$python"
run "${pip_cmd[@]}"
# Check from / so that the installed package is imported, not the checkout beside the script.
run cd /
run "${check_cmd[@]}"
