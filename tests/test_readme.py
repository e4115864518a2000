"""The README's Python examples run as written, in order, in one namespace."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 4
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # The blocks build real objects, not just import names.
    assert namespace["y"].shape == (8, 32, 32, 32)
    assert namespace["logits"].shape == (8, 10)
    assert hasattr(namespace["tx"], "update")
    assert namespace["lenet_logits"].shape == (8, 10)
    assert namespace["y_mesh"].shape == (8, 32, 32, 32)
