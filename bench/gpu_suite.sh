#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md in one call (under 10 minutes on one H100/H200): SC train steps/s, tokens/s,
# MFU and compile time of spactor (plain attention and jax.nn.dot_product_attention, i.e. cuDNN flash attention)
# beside Hugging Face's PyTorch T5, bf16, for T5.1.0-base, T5.1.1-base and T5.1.0-small.
#
#   bash bench/gpu_suite.sh                      # rows in $OUT (default /tmp/spactor_bench/gpu-<date>)
#   PY=python3 OUT=$OUT bash bench/gpu_suite.sh   # on the device machine of this workplace
#
# Needs one Python with jax (CUDA), flax, optax, orbax-checkpoint, gin-config, and torch + transformers for the
# peer (by default the same interpreter: the peer is another process of it). TensorFlow and SeqIO are not needed.
# An image without gin-config: put its wheel in .whl/ (pip download --no-deps gin-config==0.5.0 -d .whl) and this
# script installs it into /tmp/site. Writes peer_torch_gpu.json (after every config), peer_torch_gpu.txt (the
# Markdown table to paste) and log.txt; a config that fails (a kernel the GPU lacks, memory) gets its error in its
# row and the rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
TORCH_PY=${SPACTOR_BENCH_PYTHON:-$PY}
OUT=${OUT:-/tmp/spactor_bench/gpu-$(date +%F)}
CONFIGS=${CONFIGS:-base:64:512:32128,t5_1_1/base:64:512:32128,small:128:512:32128}
IMPLS=${IMPLS:-plain,dot_product_attention}
REMAT=${REMAT:-none}  # T5Config.remat_policy of our steps (a second call: CONFIGS=base:128:512:32128 REMAT=minimal)
DEVICE=${DEVICE:-gpu} DTYPE=${DTYPE:-bfloat16} PEER=${PEER:-hf}  # DEVICE=cpu PEER=none: the test suite's dry run
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import gin' 2>/dev/null; then
  if ls .whl/gin_config-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/gin_config-*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "gin-config is missing: pip download --no-deps gin-config==0.5.0 -d .whl first" | tee -a "$OUT/log.txt"
    exit 2
  fi
fi
{
  echo "== $(date -u +%FT%TZ) gpu_suite: configs $CONFIGS, attention $IMPLS, remat $REMAT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c 'import jax, flax, optax; print("jax", jax.__version__, jax.devices(), "flax", flax.__version__)'
  "$TORCH_PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
} 2>&1 | tee -a "$OUT/log.txt"

start=$SECONDS
timeout 560 "$PY" bench/peer_torch.py --device="$DEVICE" --dtype="$DTYPE" --peer="$PEER" --torch_python="$TORCH_PY" \
  --configs="$CONFIGS" --attention_impl="$IMPLS" --remat_policy="$REMAT" --reps=5 --steps=5 \
  --json="$OUT/peer_torch_gpu.json" \
  2> >(tee "$OUT/peer_torch_gpu.stderr" >&2) | tee "$OUT/peer_torch_gpu.txt"
status=$?
echo "== peer_torch done in $((SECONDS - start)) s, exit $status" | tee -a "$OUT/log.txt"
exit $status
