"""The docs' Python examples run as written: docs/op.md in order, then docs/scaling.md,
docs/distillation.md, docs/super_resolution.md and docs/shift.md (docs/training.md's task
sketch is tests/test_trainer.py's CountingTask, run there)."""

import functools
import pathlib
import re

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def test_docs_python_blocks_run():
    namespace = {}
    for name in ("op.md", "scaling.md", "distillation.md", "super_resolution.md", "shift.md"):
        path = DOCS / name
        blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
        assert blocks, name
        for block in blocks:
            exec(compile(block, str(path), "exec"), namespace)
    assert namespace["y"].shape == (8, 32, 32, 32)
    assert namespace["logits"].shape == (8, 10)
    assert namespace["lenet_logits"].shape == (8, 10)
    assert namespace["ops_count"].multiplications == 0
    assert namespace["y_mesh"].shape == (8, 32, 32, 32)
    assert abs(float(namespace["k_a"][0, 1]) - 0.1353) < 1e-4 and float(namespace["kd"]) == 0
    assert 10 < namespace["bicubic_psnr"] < 30 and 0 < namespace["bicubic_ssim"] < 1
    assert namespace["w"].tolist() == [0.0, -0.25, 1.0, -(2.0**-14)]
    assert namespace["q"].tolist() == [0.25, -1.0, 2.0**-15]
    assert namespace["y_shift"].shape == (2, 6, 6, 8)
    assert set(namespace["shift_layer_weights"]) == {""}
    assert namespace["shiftadd_ops"].multiplications == 0 and namespace["shiftadd_ops"].shifts


def test_every_doc_link_resolves():
    """Relative links of the README and docs/ point at files that exist."""
    root = DOCS.parent
    for page in [root / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: {target}"


@functools.cache
def _anchors(page: pathlib.Path) -> set[str]:
    """GitHub's heading anchors of a markdown page: lower case, punctuation dropped, spaces
    as hyphens, a repeated heading numbered -1, -2, ... (code blocks skipped)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_every_doc_anchor_resolves():
    """Links with a #heading (to another page or within one) name a heading that exists."""
    root = DOCS.parent
    for page in [root / "README.md", *DOCS.glob("*.md")]:
        for target, anchor in re.findall(r"\]\(([^)#:]*)#([^)]+)\)", page.read_text()):
            linked = (page.parent / target) if target else page
            assert anchor in _anchors(linked), f"{page.name}: {target}#{anchor}"
