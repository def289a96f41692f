"""The GPU machine check (tests/device_check.py, `make device-check`), run here on the CPU: the same
code a GPU machine runs with --device cuda."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import device_check as dc

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_whole_check_runs_on_the_cpu_and_prints_one_table():
    """`make device-check DEVICE=cpu`: both tiny models forward and backward in bf16, and the tiny TRL
    training (about a minute here)."""
    proc = subprocess.run(
        ["make", "-s", "device-check", "DEVICE=cpu", f"PYTHON={sys.executable}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("check  ") :].splitlines()
    rows = {line.split()[0]: line.split()[1:4] for line in table[2:]}
    assert rows == {"gemma3": ["cpu", "bf16", "ok"], "qwen2.5-vl": ["cpu", "bf16", "ok"], "trl": ["cpu", "fp32", "ok"]}
    assert proc.stdout.startswith("device check on CPU: torch ")


def test_an_image_that_never_reaches_the_loss_fails_its_row():
    """Gemma3 initialises its image projection to zeros; without the check's re-initialisation the
    vision tower gets no gradient, which the check must report as a failure."""
    import torch

    def zero_projection(device):
        make, inputs, vision = dc.gemma3_batch(device)

        def model():
            module = make()
            torch.nn.init.zeros_(module.model.multi_modal_projector.mm_input_projection_weight)
            return module

        return model, inputs, vision

    row = dc.measure("gemma3", "cpu", "bf16", lambda: dc.forward_backward(zero_projection, "cpu"))
    assert row.status == "FAIL" and "no gradient reached the vision tower" in row.detail
    assert dc.measure("qwen2.5-vl", "cpu", "bf16", lambda: dc.forward_backward(dc.qwen_batch, "cpu")).status == "ok"


def test_without_a_gpu_the_cuda_check_fails_and_without_trl_its_row_says_what_is_missing(monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert dc.main(["--device", "cuda"]) == 1
    assert "torch sees no CUDA device" in capsys.readouterr().out
    monkeypatch.setattr(dc, "missing_trl_packages", lambda: ["trl", "pyarrow"])
    monkeypatch.setattr(dc, "forward_backward", lambda batch, device: "stand-in")
    rows = dc.run_checks("cpu")
    assert [(r.check, r.status) for r in rows] == [("gemma3", "ok"), ("qwen2.5-vl", "ok"), ("trl", "skipped")]
    assert "not installed: trl, pyarrow" in rows[-1].detail


def test_the_table_has_one_line_per_check():
    rows = [
        dc.Row("gemma3", "cuda", "bf16", "ok", 1.25, 512.0, "fine"),
        dc.Row("trl", "cuda", "fp32", "FAIL", 3, None, "x"),
    ]
    lines = dc.render(rows).splitlines()
    assert lines[0].split() == ["check", "device", "dtype", "status", "seconds", "peak", "MiB", "detail"]
    assert lines[2].split() == ["gemma3", "cuda", "bf16", "ok", "1.2", "512", "fine"]
    assert lines[3].split() == ["trl", "cuda", "fp32", "FAIL", "3.0", "-", "x"]
