#!/usr/bin/env bash
# The one-command TPU check, for a machine with a TPU (v4, v5e, v5p, v6e), under 10 minutes:
#
#   bash benchmarks/tpu_check.sh [OUT_DIR]        # default OUT_DIR: tpu_check/
#
# 1. the default implementation is "pallas" (the Mosaic kernels of kernels/adder_tpu.py);
# 2. the kernel tests (tests/test_adder_tpu.py: on a TPU the kernels run compiled, not
#    interpreted, against adderjax.reference), and the op's own tests on this backend;
# 3. Pallas (Mosaic) vs the XLA path vs lax.conv_general_dilated (float32, HIGHEST and
#    default precision) on the benchmarks/ops.py shapes, forward and forward+backward
#    (python benchmarks/kernels.py; its roofline columns are the H100's and print nan here);
# 4. the static bundle report of the same kernels for this generation
#    (python benchmarks/kernels.py --tpu --generation GEN), to put beside the measured times:
#    the report's "kernel us" is the hot loop alone at the generation's clock.
# Everything goes to OUT_DIR as markdown (tpu_check.md) with the raw logs; it exits non-zero
# if the kernel tests fail. It needs the package installed with its test extra and libtpu:
#   python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test,tpu-aot]"
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-tpu_check}"
mkdir -p "$out"
report="$out/tpu_check.md"

gen=$(python - <<'PY'
import jax
kind = jax.devices()[0].device_kind.lower()  # e.g. "tpu v5 lite", "tpu v6 lite", "tpu v4"
print("v5e" if "v5 lite" in kind or "v5e" in kind else "v6e" if "v6" in kind
      else "v5p" if "v5" in kind else "v4")
PY
)
{
  echo "# TPU check, $(date -u +%Y-%m-%dT%H:%MZ), generation $gen"
  echo
  echo '```'
  python -c "import jax, adderjax; print('jax', jax.__version__, jax.devices()); print('implementations', adderjax.available_implementations())" 2>&1
  echo '```'
} >"$report"

timeout 300 python -m pytest -q -p no:cacheprovider tests/test_adder_tpu.py tests/test_ops.py \
  >"$out/kernel_tests.log" 2>&1
tests_rc=$?
{
  echo
  echo "## Kernel and op tests on the TPU, exit $tests_rc"
  echo
  echo '```'
  tail -n 15 "$out/kernel_tests.log"
  echo '```'
} >>"$report"

for precision in highest default; do
  {
    echo
    echo "## Pallas (Mosaic) vs XLA vs conv, conv precision $precision (python benchmarks/kernels.py --precision $precision)"
    echo
    timeout 120 python benchmarks/kernels.py --precision "$precision" --warmup 2 --repeats 10 2>&1 \
      | tee "$out/kernels_$precision.log"
  } >>"$report"
done

{
  echo
  echo "## Static bundle report (python benchmarks/kernels.py --tpu --generation $gen --only resnet50)"
  echo
  timeout 150 python benchmarks/kernels.py --tpu --generation "$gen" --only resnet50 2>&1 | tee "$out/bundles.log"
} >>"$report"

cat "$report"
exit "$tests_rc"
