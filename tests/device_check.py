"""The check of a GPU machine: `make device-check` (or `python tests/device_check.py --device cuda`).

It needs PyTorch and transformers, one GPU and no network, and prints one table:

- ``gemma3`` and ``qwen2.5-vl``: the tiny MedGemma-like Gemma3 and the tiny Qwen2.5-VL of
  tests/tiny_models.py, built on the device in bf16 with PyTorch's sdpa attention (what every verl
  run trains with), one forward and backward pass on a prompt with one image. Passes when the loss
  and every gradient are finite, the image reached the loss (the vision tower's gradient is not
  zero), and the bf16 loss is within 5% of the same model's fp32 loss.
- ``trl``: the tiny end-to-end training of the trl backend (tests/tiny_trl.py: a warm-started tiny
  Qwen2.5-VL, 2 GRPO steps of 2 prompts x 4 rollouts through eqpo.backends.trl on the fixture dataset), on
  the device. It needs trl, accelerate, datasets, pandas, pyarrow and pillow: ``--wheels DIR``
  installs the wheels of DIR (``make device-wheels``) into a temporary directory first, without
  network. Without them the row says what is missing.

``--device cpu`` runs the same on the CPU (how the tests run it). The exit status is 1 when any
row fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

TRL_PACKAGES = ("trl", "accelerate", "datasets", "pandas", "pyarrow", "PIL")
BF16_TOLERANCE = 0.05


@dataclass
class Row:
    check: str
    device: str
    dtype: str
    status: str  # ok, FAIL or skipped
    seconds: float
    peak_mib: float | None
    detail: str


# ----------------------------------------------------------------------------------------------
# Tiny models: one forward and backward pass
# ----------------------------------------------------------------------------------------------


def gemma3_batch(device):
    """The tiny Gemma3 (eval-free, sdpa) and one prompt with one 32x32 image: (model factory, inputs)."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    from tiny_models import GEMMA3_TOKENS_PER_IMAGE, gemma3_tokenizer, tiny_gemma3_config

    tokenizer = gemma3_tokenizer()
    config = tiny_gemma3_config(tokenizer)
    config._attn_implementation = "sdpa"  # what every verl run trains with
    text = tokenizer.encode("<bos><start_of_turn>user\n", add_special_tokens=False)
    block = [config.boi_token_index, *[config.image_token_index] * GEMMA3_TOKENS_PER_IMAGE, config.eoi_token_index]
    answer = tokenizer.encode(
        "Which lesion?<end_of_turn>\n<start_of_turn>model\n\\boxed{Nevus}", add_special_tokens=False
    )
    ids = torch.tensor([text + block + answer], device=device)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids,
        "token_type_ids": (ids == config.image_token_index).long(),
        "pixel_values": torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device),
    }

    def model():
        module = Gemma3ForConditionalGeneration(config)
        # Gemma3 initialises the image projection to zeros: the image would not reach the loss
        torch.nn.init.normal_(module.model.multi_modal_projector.mm_input_projection_weight, std=32**-0.5)
        return module

    return model, inputs, "vision_tower"


def qwen_batch(device):
    """The tiny Qwen2.5-VL and one prompt with one 56x56 image (4x4 patches of 14 -> 4 image tokens)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from tiny_models import IMAGE_PAD, VISION_END, VISION_START, qwen_tokenizer, tiny_qwen_config

    tokenizer = qwen_tokenizer()
    config = tiny_qwen_config("qwen2_5_vl", tokenizer)
    config._attn_implementation = "sdpa"  # what every verl run trains with
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (VISION_START, *[IMAGE_PAD] * 4, VISION_END)]
    ids = (
        tokenizer.encode("<|im_start|>user\n", add_special_tokens=False)
        + ids
        + tokenizer.encode("Which lesion?<|im_end|>\n<|im_start|>assistant\n\\boxed{Nevus}", add_special_tokens=False)
    )
    ids = torch.tensor([ids], device=device)
    patches = torch.randn(16, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0)).to(device)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids,
        "pixel_values": patches,
        "image_grid_thw": torch.tensor([[1, 4, 4]], device=device),
    }

    def model():
        return Qwen2_5_VLForConditionalGeneration(config)

    return model, inputs, "visual"


def forward_backward(batch: Callable, device: str) -> str:
    """bf16 (sdpa) forward and backward of a tiny model on ``device``; the fp32 loss of the same
    weights for comparison. Raises AssertionError with what is wrong."""
    import torch

    make, inputs, vision = batch(device)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make()
    attention = {
        c._attn_implementation for c in (model.config, model.config.get_text_config(), model.config.vision_config)
    }
    assert attention == {"sdpa"}, f"attention implementations {attention}, sdpa expected"
    model = model.to(device)
    with torch.no_grad():
        reference = float(model(**{k: v.float() if k == "pixel_values" else v for k, v in inputs.items()}).loss)
    model = model.to(torch.bfloat16)
    model.train()
    pixel = inputs["pixel_values"].to(torch.bfloat16)
    loss = model(**{**inputs, "pixel_values": pixel}).loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert math.isfinite(float(loss)), f"bf16 loss is {float(loss)}"
    bad = [name for name, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients in {bad[:3]}"
    vision_norm = sum(float(g.float().norm()) for name, g in grads.items() if vision in name)
    assert vision_norm > 0, f"no gradient reached the vision tower ({vision}): the image did not reach the loss"
    gap = abs(float(loss) - reference) / abs(reference)
    assert gap <= BF16_TOLERANCE, f"bf16 loss {float(loss):.4f} vs fp32 {reference:.4f} ({gap:.1%} apart)"
    return (
        f"loss bf16 {float(loss):.4f} / fp32 {reference:.4f}; {len(grads)} finite gradients, "
        f"vision-tower grad norm {vision_norm:.3g}; sdpa"
    )


# ----------------------------------------------------------------------------------------------
# The tiny TRL training
# ----------------------------------------------------------------------------------------------


def install_wheels(wheels: Path, target: Path) -> None:
    """``pip install --no-index --no-deps --target target`` of every wheel in ``wheels`` (no network),
    then ``target`` first on sys.path."""
    files = sorted(str(p) for p in Path(wheels).glob("*.whl"))
    if not files:
        raise FileNotFoundError(f"no wheels in {wheels}: run `make device-wheels` where PyPI is reachable")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(target), *files],
        check=True,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()


def missing_trl_packages() -> list[str]:
    return [name for name in TRL_PACKAGES if importlib.util.find_spec(name) is None]


def trl_training(device: str, workdir: Path) -> str:
    """Two GRPO steps of the tiny trl run on ``device``; checks its run files."""
    import json

    import torch

    import tiny_trl

    if device == "cuda":
        assert torch.cuda.is_available(), "no CUDA device"
    model = tiny_trl.build_model(workdir / "model", warm_steps=40)
    data = tiny_trl.export_fixture(workdir / "data")
    trl_settings = {"use_cpu": device == "cpu"}
    run = workdir / "run"
    tiny_trl.train_run(model, data, "eqpo", run, train={"steps": 2, "test_freq": 2, "save_freq": 2}, trl=trl_settings)
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2], f"steps.jsonl has steps {[s['step'] for s in steps]}"
    assert all(math.isfinite(s.get("reward_mean", 0.0)) for s in steps)
    return f"2 GRPO steps (eqpo) of 2 prompts x 4 rollouts; run files in {run}"


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------


def measure(check: str, device: str, dtype: str, fn: Callable[[], str]) -> Row:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        detail, status = fn(), "ok"
    except AssertionError as err:
        detail, status = str(err), "FAIL"
    except Exception as err:  # a crash is a failed check too; the traceback goes to stderr
        traceback.print_exc()
        detail, status = f"{type(err).__name__}: {err}".splitlines()[0], "FAIL"
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return Row(check, device, dtype, status, time.perf_counter() - start, peak, detail)


def render(rows: list[Row]) -> str:
    header = ("check", "device", "dtype", "status", "seconds", "peak MiB", "detail")
    cells = [header] + [
        (
            r.check,
            r.device,
            r.dtype,
            r.status,
            f"{r.seconds:.1f}",
            "-" if r.peak_mib is None else f"{r.peak_mib:.0f}",
            r.detail,
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    lines = ["  ".join(f"{c[i]:<{widths[i]}}" for i in range(len(widths))) + "  " + c[-1] for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  ------")
    return "\n".join(lines)


def environment(device: str) -> str:
    import torch
    import transformers

    name = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else "CPU"
    return (
        f"device check on {name}: torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"transformers {transformers.__version__}, python {sys.version.split()[0]}"
    )


def run_checks(device: str, wheels: Path | None = None, skip_trl: bool = False) -> list[Row]:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return [Row("cuda", device, "-", "FAIL", 0.0, None, "torch sees no CUDA device (torch.cuda.is_available())")]
    rows = [
        measure("gemma3", device, "bf16", lambda: forward_backward(gemma3_batch, device)),
        measure("qwen2.5-vl", device, "bf16", lambda: forward_backward(qwen_batch, device)),
    ]
    if skip_trl:
        return rows
    with tempfile.TemporaryDirectory(prefix="eqpo-device-check-") as tmp:
        if wheels is not None and missing_trl_packages():
            install_wheels(wheels, Path(tmp) / "site")
        missing = missing_trl_packages()
        if missing:
            rows.append(
                Row(
                    "trl",
                    device,
                    "fp32",
                    "skipped",
                    0.0,
                    None,
                    f"not installed: {', '.join(missing)} (make device-wheels, then WHEELS=wheels/device)",
                )
            )
        else:
            rows.append(measure("trl", device, "fp32", lambda: trl_training(device, Path(tmp))))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--wheels", type=Path, help="a directory of wheels for the trl row (make device-wheels)")
    parser.add_argument("--skip-trl", action="store_true", help="only the two forward/backward checks")
    args = parser.parse_args(argv)
    print(environment(args.device), flush=True)
    rows = run_checks(args.device, args.wheels, args.skip_trl)
    print(render(rows))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
