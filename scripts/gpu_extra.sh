#!/usr/bin/env bash
# Which xpnet extra brings CuPy for this machine's NVIDIA driver: prints "cuda12" or "cuda13", or
# nothing (with the reason on stderr) when there is no usable driver. Used by `make train`.
#
#   scripts/gpu_extra.sh
#
# The CUDA version comes from nvidia-smi's header ("CUDA Version: 12.4"): the newest CUDA the
# driver supports. CuPy's wheels for CUDA 13 need a 13.x driver or newer, those for 12 a 12.x one.
set -uo pipefail

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "no NVIDIA driver found (nvidia-smi is not on the PATH), so the GPU is not used: training runs on the CPU" >&2
    exit 0
fi
header="$(nvidia-smi 2>&1)"
major="$(printf '%s\n' "$header" | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\.[0-9].*/\1/p' | head -n 1)"
if [ -z "$major" ]; then
    echo "nvidia-smi is there but reports no CUDA version (the driver may not be working: $(printf '%s' "$header" | head -n 1)), so the GPU is not used: training runs on the CPU" >&2
    exit 0
fi
if [ "$major" -ge 13 ]; then
    echo cuda13
elif [ "$major" -eq 12 ]; then
    echo cuda12
else
    echo "the NVIDIA driver supports CUDA $major only; CuPy's wheels need CUDA 12 or newer, so the GPU is not used: training runs on the CPU (update the driver)" >&2
fi
