#!/usr/bin/env bash
# The one-command GPU check, for a machine with an NVIDIA GPU (H100/H200), under 8 minutes:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: gpu_check/
#
# 1. the compiled kernel tests (TestAdderTriton: the kernels against adderjax.reference,
#    compiled by XLA's Triton, not interpreted);
# 2. Pallas vs the XLA path vs lax.conv_general_dilated (float32, HIGHEST and default
#    precision) on the benchmarks/ops.py shapes, forward and forward+backward, beside the
#    paper roofline (python benchmarks/kernels.py);
# 3. the static SASS estimate of the same kernels, if the triton package is installed
#    (python benchmarks/kernels.py --sass), to put beside the measured times.
# Everything goes to OUT_DIR as markdown (gpu_check.md) with the raw logs; it exits non-zero
# if the kernel tests fail. It needs the package installed with its test extra, e.g.
#   python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" "jax[cuda12]"
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
mkdir -p "$out"
report="$out/gpu_check.md"

{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  python -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1
  echo '```'
} >"$report"

timeout 240 python -m pytest -q -p no:cacheprovider tests/test_adder_triton.py -k "TestAdderTriton and not Interpret" \
  >"$out/kernel_tests.log" 2>&1
tests_rc=$?
{
  echo
  echo "## Compiled kernel tests (TestAdderTriton), exit $tests_rc"
  echo
  echo '```'
  tail -n 15 "$out/kernel_tests.log"
  echo '```'
} >>"$report"

for precision in highest default; do
  {
    echo
    echo "## Pallas vs XLA vs conv, conv precision $precision (python benchmarks/kernels.py --precision $precision)"
    echo
    timeout 150 python benchmarks/kernels.py --precision "$precision" --warmup 2 --repeats 10 2>&1 \
      | tee "$out/kernels_$precision.log"
  } >>"$report"
done

if python -c "import triton" 2>/dev/null; then
  {
    echo
    echo "## Static SASS estimate (python benchmarks/kernels.py --sass --only resnet20 / resnet50)"
    echo
    timeout 100 python benchmarks/kernels.py --sass --only resnet50 --batch 32 2>&1 | tee "$out/sass.log"
  } >>"$report"
fi

cat "$report"
exit "$tests_rc"
