"""The README's Python snippets run as written, and what they save loads back."""
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_snippets():
    blocks = python_blocks()
    assert len(blocks) >= 2 and "save_checkpoint" in blocks[0]


@pytest.mark.slow
def test_readme_snippets_run_and_the_checkpoint_reloads(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    monkeypatch.chdir(tmp_path)
    ns = {}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), ns)
    import lolvit

    model = ns["model"]  # the fused lolvit_x of the first snippet
    assert Path("runs/lolvit_x.onnx").stat().st_size > 0
    loaded = lolvit.load_checkpoint("runs/lolvit_x")
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
