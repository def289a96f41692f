"""Preflight of the GPU path: can this node train and evaluate what the config asks for?

Run it on a GPU node before submitting the paper run (every ``train_verl`` job also runs it first):

    srun --nodes=1 --gpus=4 python -m eqpo.backends.verl.preflight --configfile config/smoke.yaml

It checks, in this order: the GPUs (visible, how many), the driver and the CUDA version it supports
against torch's, torch's CUDA build, verl (0.9.1) and vLLM, each model's attention implementation,
its GPU memory plan (:mod:`eqpo.backends.verl.memory_plan`) against the visible GPUs, the experiment trackers it
needs, each model's weights (local directory, Hugging Face cache or the hub, gated repos included),
the prepared verl data files of every method, and the free disk for the checkpoints. It prints one
table and then one line per problem, and exits 1 when there is any.

Nothing here imports verl, vLLM or torch at module import; every probe of the machine goes
through :class:`Probe`, so each check is tested on CPU with a faked machine.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqpo.backends.verl import memory_plan
from eqpo.data.export import train_part
from eqpo.runs import base_models
from eqpo.runs.settings import RunSettings, load_config

VERL_VERSION = "0.9.1"
# Oldest NVIDIA driver branch that supports a CUDA major version (NVIDIA's CUDA toolkit release notes,
# "minimum required driver version" for Linux x86_64).
MIN_DRIVER = {12: 525, 13: 580}
TRACKER_PACKAGES = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow"}


@dataclass(frozen=True)
class Check:
    """One row of the preflight table; ``ok`` False makes it a problem, ``fix`` says what to do."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_cuda() -> tuple[int, str | None, str | None]:
    """(visible CUDA devices, torch's CUDA build version, torch version); (0, None, None) without torch."""
    if importlib.util.find_spec("torch") is None:
        return 0, None, None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return count, torch.version.cuda, torch.__version__


def _gpu_memory() -> list[int]:
    """Total memory in bytes of each visible CUDA device (empty without torch or GPUs)."""
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]


def _nvidia_smi() -> str | None:
    """The header of ``nvidia-smi`` (driver and CUDA version), or None when it is not there."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _hub_access(repo_id: str) -> str | None:
    """None when the hub grants this machine access to ``repo_id``, else why not."""
    try:
        from huggingface_hub import auth_check
    except ImportError:
        return "huggingface_hub is not installed"
    try:
        auth_check(repo_id)
    except Exception as err:  # GatedRepoError, RepositoryNotFoundError, connection errors
        return f"{type(err).__name__}: {str(err).splitlines()[0]}"
    return None


def _disk_free(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass
class Probe:
    """What the node reports. Every field can be replaced (tests fake a GPU node with it)."""

    find_spec: Callable[[str], Any] = importlib.util.find_spec
    version: Callable[[str], str | None] = _version
    torch_cuda: Callable[[], tuple[int, str | None, str | None]] = _torch_cuda
    nvidia_smi: Callable[[], str | None] = _nvidia_smi
    gpu_memory: Callable[[], list[int]] = _gpu_memory
    hub_access: Callable[[str], str | None] = _hub_access
    disk_free: Callable[[Path], int] = _disk_free
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


# ----------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------


def _major_minor(version: str) -> tuple[int, int]:
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    return (parts + [0])[0], (parts + [0, 0])[1]


def check_gpus(probe: Probe, needed: int) -> list[Check]:
    count, cuda, torch_version = probe.torch_cuda()
    out = []
    if torch_version is None:
        return [
            Check("torch", False, "not installed", "install the GPU environment: envs/gpu.yaml (or envs/gpu.lock.txt)")
        ]
    if cuda is None:
        out.append(
            Check(
                "torch",
                False,
                f"{torch_version} is a CPU build (no CUDA)",
                "install torch from envs/gpu.yaml, which pins the CUDA 13 build verl 0.9.1 needs",
            )
        )
    else:
        out.append(Check("torch", True, f"{torch_version}, built for CUDA {cuda}"))
    if count >= needed:
        out.append(Check("GPUs", True, f"{count} visible, {needed} needed"))
    else:
        out.append(
            Check(
                "GPUs",
                False,
                f"{count} visible, {needed} needed",
                "run on a GPU node with enough GPUs (srun --gpus=N ...), check CUDA_VISIBLE_DEVICES, "
                "or lower train.gpus",
            )
        )
    smi = probe.nvidia_smi()
    driver = re.search(r"Driver Version:\s*([\d.]+)", smi or "")
    supported = re.search(r"CUDA Version:\s*([\d.]+)", smi or "")
    if not driver:
        out.append(
            Check(
                "driver",
                False,
                "nvidia-smi not found or printed no driver version",
                "run on a node with the NVIDIA driver installed",
            )
        )
        return out
    detail = f"{driver.group(1)}, supports CUDA {supported.group(1) if supported else '?'}"
    problems = []
    if cuda is not None:
        major = _major_minor(cuda)[0]
        minimum = MIN_DRIVER.get(major)
        if minimum is not None and _major_minor(driver.group(1))[0] < minimum:
            problems.append(f"torch's CUDA {cuda} needs driver R{minimum} or newer")
        if supported and _major_minor(supported.group(1)) < _major_minor(cuda):
            problems.append(f"the driver supports CUDA {supported.group(1)} but torch is built for CUDA {cuda}")
    if problems:
        out.append(
            Check(
                "driver",
                False,
                f"{detail}: " + "; ".join(problems),
                "ask your admins for a newer driver (torch 2.11 / verl 0.9.1 needs R580+), or run on "
                "nodes that have one",
            )
        )
    else:
        out.append(Check("driver", True, detail))
    return out


def check_packages(probe: Probe, predict: bool = True) -> list[Check]:
    out = []
    verl = probe.version("verl")
    if verl is None:
        out.append(Check("verl", False, "not installed", f"install verl[vllm]=={VERL_VERSION} (envs/gpu.yaml)"))
    elif verl != VERL_VERSION:
        out.append(
            Check(
                "verl",
                False,
                f"{verl} installed, {VERL_VERSION} needed",
                f"install verl[vllm]=={VERL_VERSION} (envs/gpu.yaml); other versions are not checked",
            )
        )
    else:
        out.append(Check("verl", True, verl))
    vllm = probe.version("vllm")
    out.append(
        Check("vLLM", True, vllm)
        if vllm
        else Check(
            "vLLM", False, "not installed", f"install verl[vllm]=={VERL_VERSION}; rollouts and evaluation need it"
        )
    )
    return out


def check_model(probe: Probe, model: str, entry: Mapping[str, Any]) -> tuple[list[Check], int | None]:
    """Weights, model type, attention of one model (``entry``: its ``models.<m>`` block); returns the
    checks and its parameter count."""
    out: list[Check] = []
    path = str(entry.get("path", ""))
    try:
        weights = base_models.resolve_weights(path, probe.env)
    except FileNotFoundError as err:
        return [Check(f"weights {model}", False, str(err), f"fix models.{model}.path in the config")], None
    if weights.where == "hub":
        offline = probe.env.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        denied = "HF_HUB_OFFLINE is set and the model is not in the cache" if offline else probe.hub_access(path)
        if denied:
            out.append(
                Check(
                    f"weights {model}",
                    False,
                    f"{path}: not in the cache ({base_models.hf_cache_dir(probe.env)}); hub: {denied}",
                    f"download it where the hub is reachable (huggingface-cli download {path}; gated models "
                    "need their terms accepted on huggingface.co and `huggingface-cli login`) into a cache "
                    "the nodes share (HF_HOME), or set models.<m>.path to a local directory",
                )
            )
        else:
            out.append(Check(f"weights {model}", True, f"{path}: on the hub (downloaded at the start of training)"))
    else:
        out.append(Check(f"weights {model}", True, f"{weights.where}: {weights.directory}"))
    try:
        kind = base_models.model_type(entry, model, weights)
        choice = base_models.attention(entry, model, kind)
    except ValueError as err:
        out.append(Check(f"attention {model}", False, str(err), f"fix models.{model} in the config"))
        return out, base_models.parameters_of(entry, weights)
    package = base_models.ATTENTION_PACKAGES.get(choice)
    if package and probe.find_spec(package) is None:
        out.append(
            Check(
                f"attention {model}",
                False,
                f"{choice} needs the {package} package, which is not installed",
                f"install {package} for your torch/CUDA (no PyPI wheel for torch 2.11), or remove "
                f"models.{model}.attention to train with sdpa",
            )
        )
    else:
        out.append(Check(f"attention {model}", True, f"{choice} ({kind or 'model type unknown'})"))
    return out, base_models.parameters_of(entry, weights)


def check_memory(probe: Probe, runs: Sequence[RunSettings], n_params: int | None) -> list[Check]:
    """The GPU memory plan (:mod:`eqpo.backends.verl.memory_plan`) of ``runs`` (the runs of one model)
    against the smallest visible GPU, once per distinct setting among them; a plan that does not fit is
    a problem whose fix says what fits."""
    model, entry = runs[0].model, runs[0].model_config
    sizes = probe.gpu_memory()
    if n_params is None or not sizes:
        why = "no GPU visible" if not sizes else f"no parameter count (set models.{model}.params_billion)"
        return [Check(f"memory {model}", True, f"{why}; not checked")]
    try:
        weights = base_models.resolve_weights(str(entry.get("path", "")), probe.env)
    except FileNotFoundError:
        weights = None
    directory = weights.directory if weights is not None and weights.where != "hub" else None
    kind = entry.get("model_type") or base_models.read_model_type(directory)
    gpu_gib = min(sizes) / memory_plan.GIB
    out, seen = [], set()
    for settings in runs:
        shape = memory_plan.run_shape(entry, settings.train, n_params, kind, directory)
        if shape in seen:
            continue
        seen.add(shape)
        plan = shape.plan(gpu_gib)
        name = f"memory {model}" + (f"/{settings.method}" if len(runs) > 1 and len(seen) > 1 else "")
        detail = f"plan {plan.peak_gib:.0f} of {gpu_gib:.0f} GiB per GPU: {plan.describe()}"
        out.append(
            Check(name, True, detail)
            if plan.fits(gpu_gib)
            else Check(name, False, detail, memory_plan.fix_for(shape, gpu_gib) + " (README: GPU memory plan)")
        )
    return out


def check_trackers(probe: Probe, loggers: Iterable[str]) -> list[Check]:
    out = []
    for name in dict.fromkeys(loggers):
        package = TRACKER_PACKAGES.get(name, name)
        if probe.find_spec(package) is None:
            out.append(
                Check(
                    f"logger {name}",
                    False,
                    f"train.loggers asks for {name}; {package} is not installed",
                    f"pip install {package} in the GPU environment, or remove it from train.loggers",
                )
            )
        else:
            out.append(Check(f"logger {name}", True, f"{package} importable"))
    return out


def data_files(data_dir: Path, methods: Iterable[str], evaluation: bool = True) -> list[Path]:
    """The verl export files the methods train and validate on (and, with ``evaluation``, the test
    split that evaluation reads)."""
    parts = {"val"} | ({"test"} if evaluation else set()) | {train_part(m) for m in methods}
    return [Path(data_dir) / f"{part}.parquet" for part in sorted(parts)]


def check_data(data_dir: Path, methods: Iterable[str], evaluation: bool = True) -> Check:
    files = data_files(data_dir, methods, evaluation)
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        return Check(
            "data",
            False,
            f"{data_dir}: missing {', '.join(missing)}",
            "prepare the data first: snakemake <profile and configfiles> --until export_verl",
        )
    return Check("data", True, f"{data_dir}: {len(files)} files present")


def _gb(n: int) -> str:
    return f"{n / 1e9:,.0f} GB"


def check_disk(
    probe: Probe, runs: Sequence[RunSettings], params: Mapping[str, int | None], seeds: int, results: Path
) -> Check:
    """Free disk under ``results`` against the largest run's peak (verl keeps max_ckpt_to_keep + 1
    checkpoints while it saves) and the total the planned runs keep (each of ``runs`` once per seed;
    ``params``: parameter count per model, None where unknown)."""
    need: list[int] = []
    for settings in runs:
        n = params.get(settings.model)
        if n is None:
            continue
        keep = settings.train.max_ckpt_to_keep
        if keep is None:
            return Check("disk", True, "train.max_ckpt_to_keep is null: verl keeps every checkpoint; not bounded")
        need.append(base_models.run_disk_bytes(n, keep, settings.train.save_hf_model))
    if not need:
        return Check("disk", True, "no parameter count known (set models.<m>.params_billion); not checked")
    free = probe.disk_free(results)
    largest = max(need)
    detail = (
        f"{_gb(free)} free under {results}; one run needs up to {_gb(largest)}, "
        f"all {len(need) * seeds} runs {_gb(sum(need) * seeds)}"
    )
    if free < largest:
        return Check(
            "disk",
            False,
            detail,
            "free space, point the results to a larger filesystem, or lower "
            "train.max_ckpt_to_keep / turn off train.save_hf_model",
        )
    return Check("disk", True, detail)


def run_checks(
    runs: Sequence[RunSettings],
    data_dir: str | Path,
    results: str | Path,
    probe: Probe | None = None,
    gpus: int | None = None,
    evaluation: bool = True,
    seeds: int = 1,
) -> list[Check]:
    """Every check for training ``runs`` (the settings of each (model, method) run, each run ``seeds``
    times) on this node, from the verl export in ``data_dir`` into ``results`` (and, with
    ``evaluation``, evaluating them: the test split). ``gpus``: the GPUs one run needs (default the
    largest ``train.gpus`` of the runs)."""
    if not runs:
        raise ValueError("preflight: no run to check")
    probe = probe or Probe()
    checks = check_gpus(probe, gpus if gpus is not None else max(r.train.gpus for r in runs))
    checks += check_packages(probe)
    params: dict[str, int | None] = {}
    by_model: dict[str, list[RunSettings]] = {}
    for settings in runs:
        by_model.setdefault(settings.model, []).append(settings)
    for model, model_runs in by_model.items():
        rows, params[model] = check_model(probe, model, model_runs[0].model_config)
        checks += rows
        checks += check_memory(probe, model_runs, params[model])
    checks += check_trackers(probe, [name for r in runs for name in r.train.loggers])
    methods = list(dict.fromkeys(r.method for r in runs))
    checks.append(check_data(Path(data_dir), methods, evaluation))
    checks.append(check_disk(probe, runs, params, seeds, Path(results)))
    return checks


def problems(checks: Iterable[Check]) -> list[str]:
    """One line per failed check: what is wrong and how to fix it."""
    return [f"{c.name}: {c.detail}" + (f" -> {c.fix}" if c.fix else "") for c in checks if not c.ok]


def render(checks: Sequence[Check]) -> str:
    """The checks as one plain-text table (check, status, detail)."""
    rows = [("check", "status", "detail")] + [(c.name, "ok" if c.ok else "FAIL", c.detail) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in rows]
    lines.insert(1, f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * 6}")
    return "\n".join(lines)


def report(checks: Sequence[Check]) -> str:
    """The table, then one line per problem (or that there is none)."""
    found = problems(checks)
    tail = ["", f"{len(found)} problem(s):", *found] if found else ["", "preflight: no problems"]
    return "\n".join([render(checks), *tail])


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, probe: Probe | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eqpo.backends.verl.preflight", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--configfile", nargs="*", default=[], help="overlays, as given to snakemake")
    parser.add_argument("--root", default=".", help="the repository root (holds config.yaml); default: here")
    parser.add_argument("--model", action="append", help="check only these base models (default: base_models)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    config = load_config(args.configfile, root)
    models = args.model or [m for m in config["base_models"] if config["models"][m].get("backend") == "verl"]
    if not models:
        print("preflight: no verl model in base_models; nothing to check")
        return 0
    experiment = config["experiment"]
    data_dir = root / config["data"].get("root", "data") / experiment / "verl"
    runs = [RunSettings.from_config(config, model, method) for model in models for method in config["methods"]]
    seeds = len(config.get("seeds") or [0])
    checks = run_checks(runs, data_dir, root / "results" / experiment, probe, seeds=seeds)
    print(report(checks))
    return 1 if problems(checks) else 0


if __name__ == "__main__":
    sys.exit(main())
