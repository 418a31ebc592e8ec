#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the checks that cannot run without one, and the GPU frames/s.
#
#   benchmarks/triton_gpu_check.sh [OUT_DIR]        (default gpu_check/; PY=... to pick the interpreter)
#
# 1. benchmarks/triton_bench.py: the deployed model through the real tritonserver, KIND_CPU then KIND_GPU on
#    the same inputs: model and labelled frames/s, latency, GPU/CPU ratios (OUT_DIR/triton_bench.json).
# 2. The GPU tests: the backend's KIND_GPU instances against the in-process model (tests/test_triton.py), and
#    a per-node Triton on a Ray node with a GPU, declared to Ray and labelling real videos through the flow
#    (tests/test_cluster.py). They skip without CUDA, so a skip here is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-gpu_check}
mkdir -p "$OUT"
nvidia-smi -L
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA GPU')"
"$PY" benchmarks/triton_bench.py --out "$OUT/triton_bench.json" --allow-dirty 2>&1 | tee "$OUT/triton_bench.txt"
"$PY" -m pytest -q -rs -p no:cacheprovider \
  "tests/test_triton.py::test_gpu_instances" \
  "tests/test_cluster.py::test_a_gpu_nodes_server_holds_its_gpu_and_labels" 2>&1 | tee "$OUT/gpu_tests.txt"
if grep -q "SKIPPED" "$OUT/gpu_tests.txt"; then echo "a GPU test was skipped: no GPU seen" >&2; exit 1; fi
echo "figures and test output in $OUT/"
