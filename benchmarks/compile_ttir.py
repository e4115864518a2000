"""Compiles Triton IR files to sm_90 cubins with the `triton` package, offline; prints JSON.

    python benchmarks/compile_ttir.py DIR

Files are named NAME.wNUM_WARPS.sNUM_STAGES.ttir. Run in its own process (by
`benchmarks/sass_model.py`): the triton package and jaxlib each carry an LLVM, which are best not
loaded into one process. For every DIR/*.ttir it writes DIR/NAME.sass (the disassembly by
the `cuobjdump` that the triton wheel ships) and prints one JSON line: the file, the
registers and local (spill) bytes per thread that `cuobjdump --dump-resource-usage` reports,
the shared memory per block that Triton allocates, the constant trip counts of the kernel's
loops in the compiled Triton GPU IR, or the compile error.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

# Triton 3.9 warns when this is unset; fusion on is its default and XLA's (a * b + c -> FFMA).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

CUOBJDUMP = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
# A loop of a Pallas kernel (lax.fori_loop with static bounds) after canonicalisation.
LOOP = re.compile(r"scf\.for %\S+ = %c0_i32 to %c(\d+)_i32 step %c1_i32")


def compile_one(path: pathlib.Path) -> dict:
    num_warps, num_stages = (
        int(v) for v in re.search(r"\.w(\d+)\.s(\d+)\.ttir$", path.name).groups()
    )
    try:
        kernel = triton.compile(
            str(path),
            target=GPUTarget("cuda", 90, 32),
            options=dict(num_warps=num_warps, num_stages=num_stages),
        )
    except Exception as e:  # noqa: BLE001 - reported to the caller, which fails on it
        return {"file": path.name, "error": f"{type(e).__name__}: {e}"[:2000]}
    cubin = path.with_suffix(".cubin")
    cubin.write_bytes(kernel.asm["cubin"])
    usage = subprocess.run(
        [str(CUOBJDUMP), "--dump-resource-usage", str(cubin)], capture_output=True, text=True
    ).stdout
    sass = subprocess.run(
        [str(CUOBJDUMP), "-sass", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    path.with_suffix(".sass").write_text(sass)
    fields = dict(re.findall(r"(REG|LOCAL):(\d+)", usage))
    return {
        "file": path.name,
        **{k.lower(): int(v) for k, v in fields.items()},
        "shared": kernel.metadata.shared,
        "trips": [int(n) for n in LOOP.findall(kernel.asm["ttgir"])],
    }


def main():
    directory = pathlib.Path(sys.argv[1])
    for path in sorted(directory.glob("*.ttir")):
        print(json.dumps(compile_one(path)), flush=True)


if __name__ == "__main__":
    main()
