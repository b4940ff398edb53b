#!/usr/bin/env bash
# Runs the llama.cpp peer benchmark (benches/llamacpp_peer.py), building
# llama-cpp-python from its source distribution into a scratch venv first if
# needed. llama.cpp is never a dependency of the project: it lives only in
# that venv.
#
#   benches/llamacpp_peer.sh --model M.gguf --batches 1,32,128
#
# IG_LLAMACPP_VENV: the venv to use or create (default target/peer/llamacpp-venv).
# The first build compiles llama.cpp for this CPU (GGML_NATIVE): ~5-10 min on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${IG_LLAMACPP_VENV:-$here/../target/peer/llamacpp-venv}"
version="0.3.36"

if ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "llamacpp_peer: building llama-cpp-python $version into $venv (once)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    # cmake and ninja come from the package index like everything else.
    "$venv/bin/pip" install --quiet cmake ninja scikit-build-core >&2
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
        "$venv/bin/pip" install --no-binary llama-cpp-python --no-build-isolation \
        "llama-cpp-python==$version" >&2
fi
exec "$venv/bin/python" "$here/llamacpp_peer.py" "$@"
