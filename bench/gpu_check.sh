#!/usr/bin/env bash
# GPU check of the trainer (bench/gpu_check.py): flash-attn varlen against per-sample SDPA,
# then one 131,072-token packed step of a ~1.7B model. Under 8 minutes on one H100/H200.
#
#     bash bench/gpu_check.sh [--out DIR]
#
# flash-attn is installed ONLY from a prebuilt wheel, never built from source (a source build
# takes the better part of an hour and needs a CUDA toolkit matching torch's): first a
# flash_attn-*.whl in $GPU_CHECK_WHEELS (default .whl/ in the repo: a folder of wheels carried
# to a machine that reaches no registry), else `pip install --only-binary=:all:` from the
# registry. If no wheel fits, it says so and the check still runs the step, with SDPA.
# The same folder may hold the wheels of the project's own needs that a bare GPU image lacks
# (msgspec: train/ imports it). Everything is installed into $GPU_CHECK_SITE, a folder put on
# PYTHONPATH, so the Python environment itself is left as it was.
#
# Exit status: gpu_check.py's (0 passed, 1 failed, 2 no CUDA), or 1 when the project's needs
# cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
PIP=("$PYTHON" -m pip install --quiet --no-deps --no-compile --upgrade --disable-pip-version-check)
REGISTRY=(--only-binary=:all: --retries 0 --timeout 15)  # offline machines fail fast

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device is visible to $PYTHON's torch (or torch does not import); this check needs one GPU. Nothing was run." >&2
    exit 2
fi
mkdir -p "$SITE/project" "$SITE/flash"
export PYTHONPATH="$SITE/project${PYTHONPATH:+:$PYTHONPATH}"

# wheel_or_registry DIR NAME PATTERN: install NAME into DIR from a local wheel matching PATTERN, else from the registry
wheel_or_registry() {
    local wheel
    wheel=$(ls "$WHEELS"/$3 2>/dev/null | head -n 1 || true)
    if [ -n "$wheel" ]; then
        echo "gpu_check: installing $wheel"
        "${PIP[@]}" --no-index --target "$1" "$wheel"
    else
        echo "gpu_check: no $3 in $WHEELS; trying the registry for a prebuilt $2 wheel"
        "${PIP[@]}" "${REGISTRY[@]}" --target "$1" "$2"
    fi
}

# the project's own needs
if ! "$PYTHON" -c 'import msgspec' 2>/dev/null; then
    wheel_or_registry "$SITE/project" msgspec 'msgspec-*.whl' || {
        echo "gpu_check: msgspec (imported by train/) is missing, and there is no wheel of it in $WHEELS nor on a reachable registry." >&2
        echo "gpu_check: carry one: pip download --no-deps --only-binary=:all: --python-version X.Y --platform manylinux_2_17_x86_64 -d .whl msgspec" >&2
        exit 1
    }
fi

# flash-attn: a prebuilt wheel or nothing
fits=$("$PYTHON" -c 'import sys, torch; print(f"python {sys.version_info[0]}.{sys.version_info[1]}, torch {torch.__version__}, CUDA {torch.version.cuda}, C++11 ABI {torch._C._GLIBCXX_USE_CXX11_ABI}")')
without_flash="part 1 (flash-attn vs SDPA) is skipped; part 2 (the 131,072-token step) runs with SDPA per sample segment."
if "$PYTHON" -c 'from flash_attn import flash_attn_varlen_func' 2>/dev/null; then
    echo "gpu_check: flash-attn is already installed"
elif ! wheel_or_registry "$SITE/flash" flash-attn 'flash_attn-*.whl'; then
    echo "gpu_check: NO PREBUILT flash-attn WHEEL FITS this machine ($fits), and none is built from source; $without_flash" >&2
elif problem=$(PYTHONPATH="$SITE/flash:$PYTHONPATH" "$PYTHON" -c 'from flash_attn import flash_attn_varlen_func' 2>&1); then
    export PYTHONPATH="$SITE/flash:$PYTHONPATH"
    echo "gpu_check: flash-attn installed from a prebuilt wheel"
else
    echo "gpu_check: the flash-attn wheel installed but does not import on this machine ($fits): ${problem##*$'\n'}; $without_flash" >&2
fi

exec "$PYTHON" bench/gpu_check.py "$@"
