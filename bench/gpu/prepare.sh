#!/usr/bin/env bash
# Packs everything bench/gpu/run.sh needs on the GPU machine into bench/out/gpu-carry/ (ignored by
# git; name it in the device call's `carry`): the CUDA build of emlab (stripped, xz: ~15 MiB), the
# emlab-sae benchmark binary (CUDA), the two models' tokenizers + configs (no weights), and checks
# that the whole call stays under the 64 MiB the device machine accepts.
#   bash bench/gpu/prepare.sh           (needs bench/.venv with transformers: bench/setup-python.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
carry=bench/out/gpu-carry
models="${EMLAB_MODELS:-$HOME/.cache/emlab/models}"
py="${PY:-bench/.venv/bin/python}"
mkdir -p "$carry"
bin="${EMLAB_CUDA_BIN:-}"
if [ -z "$bin" ]; then scripts/build-cuda.sh; bin="${CARGO_TARGET_DIR:-$root/target-cuda}/emlab-cuda"; fi
xz -T2 -9 -c "$bin" > "$carry/emlab.xz"
# emlab-sae's benchmark (the `bench_sae` example) built with CUDA by scripts/build-cuda.sh.
sae_bin="${EMLAB_CUDA_SAE_BIN:-$(dirname "$bin")/bench_sae-cuda}"
[ -x "$sae_bin" ] || { echo "prepare.sh: no CUDA bench_sae at $sae_bin (scripts/build-cuda.sh builds it)" >&2; exit 1; }
rm -f "$carry/bench_sae"
xz -T2 -9 -c "$sae_bin" > "$carry/bench_sae.xz"
tmp="$(mktemp -d)"
"$py" bench/gpu/export_tokenizer.py "$models/SmolLM2-135M-Instruct.Q4_1.gguf" "$tmp/tok-smollm2"
"$py" bench/gpu/export_tokenizer.py "$models/qwen2.5-coder-0.5b-instruct.gguf" "$tmp/tok-qwen"
tar -cJf "$carry/tokenizers.tar.xz" -C "$tmp" tok-smollm2 tok-qwen
rm -rf "$tmp"
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z -o --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
tree_mb=$(( ( ${tracked:-0} + ${untracked:-0} ) / 1048576 ))
carry_mb=$(du -sm "$carry" | cut -f1)
echo "prepare.sh: carry $carry_mb MiB + working tree ~$tree_mb MiB (limit 64)"
ls -la "$carry"
[ $(( carry_mb + tree_mb )) -lt 64 ] || { echo "prepare.sh: over the 64 MiB a device call carries" >&2; exit 1; }
