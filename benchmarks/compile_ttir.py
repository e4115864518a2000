"""Compiles Triton IR files to sm_90 cubins with the `triton` package, offline; prints JSON.

    python tests/compile_ttir.py DIR

Files are named NAME.wNUM_WARPS.sNUM_STAGES.ttir. Run in its own process by
tests/test_pallas.py: the triton package and jaxlib each carry an LLVM, which are best not
loaded into one process. For every DIR/*.ttir it prints one JSON
line: the file, the registers and local (spill) bytes per thread that
`cuobjdump --dump-resource-usage` reports for the cubin, the dynamic shared memory per block
that Triton allocates, or the compile error.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

directory = pathlib.Path(sys.argv[1])
cuobjdump = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
for path in sorted(directory.glob("*.ttir")):
    # NAME.wWARPS.sSTAGES.ttir
    num_warps, num_stages = (
        int(v) for v in re.search(r"\.w(\d+)\.s(\d+)\.ttir$", path.name).groups()
    )
    try:
        kernel = triton.compile(
            str(path),
            target=GPUTarget("cuda", 90, 32),
            options=dict(num_warps=num_warps, num_stages=num_stages),
        )
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        print(json.dumps({"file": path.name, "error": f"{type(e).__name__}: {e}"[:2000]}))
        continue
    cubin = path.with_suffix(".cubin")
    cubin.write_bytes(kernel.asm["cubin"])
    usage = subprocess.run(
        [str(cuobjdump), "--dump-resource-usage", str(cubin)], capture_output=True, text=True
    ).stdout
    fields = dict(re.findall(r"(REG|LOCAL):(\d+)", usage))
    print(
        json.dumps(
            {
                "file": path.name,
                **{k.lower(): int(v) for k, v in fields.items()},
                "shared": kernel.metadata.shared,
            }
        )
    )
