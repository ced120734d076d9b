#!/usr/bin/env bash
# Check gptlab's GGUF exports against llama.cpp itself (run by hand; not part of the test suite).
#
# Builds llama-cpp-python 0.3.36 from its PyPI sdist (vendored llama.cpp, CPU only) into a venv
# under ~/.cache (reused when present; ~11 min on 2 cores), then runs scripts/check_llama_cpp.py
# with gptlab's Python, which exports the files and drives llama.cpp in that venv.
#
#   scripts/check_llama_cpp.sh            # build if needed, then check
#   scripts/check_llama_cpp.sh --build    # build only
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${GPTLAB_LLAMA_CPP_CACHE:-$HOME/.cache/gptlab-llama-cpp}"
VENV="$CACHE/venv"
VERSION=0.3.36
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

if ! "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
    echo "building llama-cpp-python $VERSION from its sdist into $VENV" >&2
    mkdir -p "$CACHE/sdist"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" download -q --no-binary :all: --no-deps -d "$CACHE/sdist" "llama-cpp-python==$VERSION"
    CMAKE_ARGS="-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$VENV/bin/pip" install -v "$CACHE/sdist/llama_cpp_python-$VERSION.tar.gz"
fi
[ "${1:-}" = "--build" ] && exit 0

cd "$ROOT"
PYTHONPATH="$ROOT/src" exec "$PYTHON" scripts/check_llama_cpp.py --llama-python "$VENV/bin/python" "$@"
