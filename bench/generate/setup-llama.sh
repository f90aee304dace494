#!/usr/bin/env bash
# Build llama-cpp-python (pinned) from source into bench/generate/.venv-llama: the llama.cpp
# reference for bench_generate.sh. Idempotent: does nothing when the pinned version imports.
#
#   bash bench/generate/setup-llama.sh      # ~10 min on 2 cores the first time
#
# Portable CPU flags (x86-64-v3: AVX2 + FMA + F16C + BMI2), the same floor emlab's own binaries
# are built for (.cargo/config.toml): never the native CPU.
#
#   LLAMA_AVX512=1 bash bench/generate/setup-llama.sh   # a second build in .venv-llama-avx512
#
# emlab's `--q8` picks an AVX-512 VNNI kernel at run time where the CPU has one; this second build
# (AVX-512 F/BW/VL/VNNI/BF16/VBMI on) gives llama.cpp the same instructions, so bench_generate.sh
# measures both llama.cpp builds when the second exists.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-llama"
if [ "${LLAMA_AVX512:-0}" = 1 ]; then
    venv="$here/.venv-llama-avx512"
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
fi
py="${PYTHON:-python3}"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$LLAMA_CPP_PYTHON_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
import llama_cpp  # noqa: F401
sys.exit(0 if version("llama_cpp_python") == sys.argv[1] else 1)
PY
then
    echo "setup-llama.sh: llama-cpp-python $LLAMA_CPP_PYTHON_VERSION already in $venv"
    exit 0
fi

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
echo "setup-llama.sh: building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION from source (CMAKE_ARGS=$CMAKE_ARGS)"
"$venv/bin/python" -m pip install --no-binary llama-cpp-python --no-cache-dir --verbose \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" numpy
"$venv/bin/python" -c 'import llama_cpp; print("setup-llama.sh: ok: llama-cpp-python", llama_cpp.__version__, "| llama.cpp system info:", llama_cpp.llama_print_system_info().decode())'
