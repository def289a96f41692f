"""GPU memory plan of one verl 0.9.1 training run: what each GPU holds, in GiB (2**30 bytes), while
vLLM generates and at the actor update, for a parameter count, a GPU count and offload setting.

What verl 0.9.1 does, and so what the plan adds up (per GPU; the actor's FSDP shards are split over
the ``gpus`` of the run, ``train.gpus x train.nnodes``):

- The actor is fp32 (``engine/fsdp.yaml``: ``model_dtype: fp32``): 4 bytes per parameter, as are its
  gradients; AdamW keeps two fp32 moments (8 bytes).
- ``param_offload`` / ``optimizer_offload`` move the parameters / the AdamW moments to host memory
  only while vLLM generates. For the update verl brings them back onto the GPU once, before the
  first mini-batch (``engine/base.py``: ``train_mode`` -> ``engine.to(device, model=param_offload,
  optimizer=optimizer_offload)``), so the update holds parameters, gradients and both moments
  whether or not they are offloaded.
- ``torch.optim.AdamW`` with its defaults uses the foreach implementation on CUDA, whose step
  allocates a full-size fp32 temporary (``torch._foreach_sqrt(exp_avg_sqs)``): 4 more bytes per
  parameter at the step.
- During the backward pass of a micro-batch the logits are alive instead: verl's padded path
  (sdpa, no remove-padding) materialises the micro-batch's logits (bf16, 2 bytes), their fp32
  log-softmax (4) and its gradient (4) over the whole vocabulary for up to
  ``ppo_max_token_len_per_gpu`` tokens (:data:`LOGIT_BYTES`; an estimate of the largest activation,
  with gradient checkpointing on as verl's default).
- FSDP2 with ``offload_policy: true`` (``CPUOffloadPolicy``) keeps parameters, gradients and AdamW
  on the host for the whole run and steps the optimizer there: none of them, nor the temporary, is
  on the GPU.
- vLLM takes ``rollout_gpu_memory`` x the GPU's memory while it generates (weights, KV cache, CUDA
  graphs), and sleeps during the update, keeping its CUDA context and graph pool
  (:data:`VLLM_ASLEEP_GIB`, an estimate); the actor process has its own CUDA context
  (:data:`CUDA_CONTEXT_GIB`, an estimate).

The two estimates are stated as such wherever the plan is printed. The plan's purpose is to stop a
run that cannot fit before it waits in the queue and runs out of memory at its first update, and
to say what fits instead; it is not a measurement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eqpo.runs.settings import RunSettings, TrainSettings, flatten_overrides, load_config

GIB = 2**30
FP32 = 4
ADAM_MOMENTS = 2
LOGIT_BYTES = 2 + 4 + 4  # per token and vocabulary entry: bf16 logits, fp32 log-softmax, its gradient
CUDA_CONTEXT_GIB = 1.0  # the actor process's CUDA context and allocator slack (estimate)
VLLM_ASLEEP_GIB = 2.0  # a sleeping vLLM's CUDA context and CUDA-graph pool (estimate)
# Vocabulary sizes of the paper models' released config.json, used when the weights are not on disk.
VOCAB_SIZES = {"gemma3": 262_208, "qwen2_5_vl": 152_064, "qwen3_vl": 151_936}
# verl keys of models.<m>.overrides that change the plan.
OFFLOAD_PARAM = "actor_rollout_ref.actor.fsdp_config.param_offload"
OFFLOAD_OPTIMIZER = "actor_rollout_ref.actor.fsdp_config.optimizer_offload"
OFFLOAD_POLICY = "actor_rollout_ref.actor.fsdp_config.offload_policy"
STRATEGY = "actor_rollout_ref.actor.strategy"
MAX_TOKENS = "actor_rollout_ref.actor.ppo_max_token_len_per_gpu"


def max_token_len_per_gpu(train: TrainSettings) -> int:
    """verl's ``ppo_max_token_len_per_gpu`` (tokens) as the launcher sets it: two of the run's longest
    sequences (prompt + response) per micro-batch."""
    return 2 * (train.max_prompt_length + train.max_response_length)


@dataclass(frozen=True)
class MemoryPlan:
    """GiB per GPU by what holds it, in the two phases of a training step."""

    gpus: int
    rollout: dict[str, float]
    update: dict[str, float]
    # update terms that never coexist: the larger one counts (logits in the backward pass, the
    # foreach temporary at the optimizer step)
    alternatives: tuple[str, str] = ("logits of a micro-batch", "AdamW foreach temporary")

    @property
    def rollout_gib(self) -> float:
        return sum(self.rollout.values())

    @property
    def update_gib(self) -> float:
        a, b = self.alternatives
        return sum(v for k, v in self.update.items() if k not in self.alternatives) + max(
            self.update.get(a, 0.0), self.update.get(b, 0.0)
        )

    @property
    def peak_gib(self) -> float:
        return max(self.rollout_gib, self.update_gib)

    def fits(self, gpu_gib: float) -> bool:
        return self.peak_gib <= gpu_gib

    def describe(self) -> str:
        """One line per phase: its total and terms."""

        def terms(part: Mapping[str, float]) -> str:
            return ", ".join(f"{k} {v:.1f}" for k, v in part.items() if v)

        a, b = self.alternatives
        return (
            f"update {self.update_gib:.1f} GiB/GPU ({terms(self.update)}; the larger of {a} and {b} counts); "
            f"rollout {self.rollout_gib:.1f} GiB/GPU ({terms(self.rollout)}); over {self.gpus} GPU(s); "
            "CUDA context and sleeping vLLM are estimates"
        )


def memory_plan(
    n_params: int,
    gpus: int,
    *,
    gpu_gib: float,
    rollout_share: float,
    tokens_per_gpu: int,
    vocab_size: int | None,
    param_offload: bool = False,
    optimizer_offload: bool = False,
    cpu_offload_policy: bool = False,
) -> MemoryPlan:
    """The plan of ``n_params`` parameters sharded over ``gpus`` GPUs of ``gpu_gib`` GiB each.

    ``rollout_share``: vLLM's ``gpu_memory_utilization``; ``tokens_per_gpu``: verl's
    ``ppo_max_token_len_per_gpu``; ``vocab_size`` None leaves the logits out (unknown model).
    ``cpu_offload_policy``: FSDP2 with ``offload_policy: true`` (parameters, gradients, AdamW on the host).
    """
    if gpus < 1 or n_params < 1:
        raise ValueError(f"a memory plan needs >= 1 GPU and >= 1 parameter, got gpus={gpus}, n_params={n_params}")
    shard = n_params / gpus / GIB  # GiB per byte-per-parameter on one GPU
    on_gpu = not cpu_offload_policy
    update = {
        "fp32 parameters": FP32 * shard * on_gpu,
        "fp32 gradients": FP32 * shard * on_gpu,
        "AdamW moments": ADAM_MOMENTS * FP32 * shard * on_gpu,
        "AdamW foreach temporary": FP32 * shard * on_gpu,
        "logits of a micro-batch": tokens_per_gpu * (vocab_size or 0) * LOGIT_BYTES / GIB,
        "CUDA context": CUDA_CONTEXT_GIB,
        "vLLM asleep": VLLM_ASLEEP_GIB,
    }
    rollout = {
        "vLLM": rollout_share * gpu_gib,
        "fp32 parameters": FP32 * shard * (on_gpu and not param_offload),
        "AdamW moments": ADAM_MOMENTS * FP32 * shard * (on_gpu and not optimizer_offload),
        "CUDA context": CUDA_CONTEXT_GIB,
    }
    return MemoryPlan(gpus=gpus, rollout=rollout, update=update)


# ----------------------------------------------------------------------------------------------
# One run of the config
# ----------------------------------------------------------------------------------------------


def vocab_size(entry: Mapping[str, Any], kind: str | None, directory: Path | None) -> int | None:
    """The vocabulary from the weights' config.json when on disk, else the released model's."""
    if directory is not None and (Path(directory) / "config.json").is_file():
        config = json.loads((Path(directory) / "config.json").read_text())
        size = (config.get("text_config") or {}).get("vocab_size") or config.get("vocab_size")
        if size:
            return int(size)
    return VOCAB_SIZES.get(kind or "")


@dataclass(frozen=True)
class RunShape:
    """What the plan of one run depends on, read from its settings."""

    n_params: int
    gpus: int
    rollout_share: float
    tokens_per_gpu: int
    vocab_size: int | None
    param_offload: bool
    optimizer_offload: bool
    cpu_offload_policy: bool

    def plan(self, gpu_gib: float, gpus: int | None = None, **changes: bool) -> MemoryPlan:
        """The plan on GPUs of ``gpu_gib`` GiB (optionally with another GPU count or offload setting)."""
        settings = {
            "param_offload": self.param_offload,
            "optimizer_offload": self.optimizer_offload,
            "cpu_offload_policy": self.cpu_offload_policy,
            **changes,
        }
        return memory_plan(
            self.n_params,
            gpus or self.gpus,
            gpu_gib=gpu_gib,
            rollout_share=self.rollout_share,
            tokens_per_gpu=self.tokens_per_gpu,
            vocab_size=self.vocab_size,
            **settings,
        )


def run_shape(
    entry: Mapping[str, Any], train: TrainSettings, n_params: int, kind: str | None, directory: Path | None = None
) -> RunShape:
    """The shape of a run of model ``entry`` (``models.<m>``) with the run's ``train`` settings."""
    overrides = {k.lstrip("+"): v for k, v in flatten_overrides(entry.get("overrides")).items()}
    fsdp2 = overrides.get(STRATEGY) == "fsdp2"
    return RunShape(
        n_params=n_params,
        gpus=train.gpus * train.nnodes,
        rollout_share=train.rollout_gpu_memory,
        tokens_per_gpu=int(overrides.get(MAX_TOKENS) or max_token_len_per_gpu(train)),
        vocab_size=vocab_size(entry, kind, directory),
        param_offload=bool(overrides.get(OFFLOAD_PARAM, False)),
        optimizer_offload=bool(overrides.get(OFFLOAD_OPTIMIZER, False)),
        cpu_offload_policy=fsdp2 and bool(overrides.get(OFFLOAD_POLICY, False)),
    )


def fix_for(shape: RunShape, gpu_gib: float, max_gpus: int = 8) -> str:
    """What makes a run that does not fit GPUs of ``gpu_gib`` GiB fit: the smallest GPU count (up to
    ``max_gpus`` per node), else offloading, else a bigger GPU."""
    for gpus in range(shape.gpus + 1, max_gpus + 1):
        plan = shape.plan(gpu_gib, gpus=gpus)
        if plan.fits(gpu_gib):
            return f"set train.gpus: {gpus} (plan {plan.peak_gib:.0f} GiB/GPU)"
    offload = shape.plan(gpu_gib, param_offload=True, optimizer_offload=True)
    if offload.rollout_gib < shape.plan(gpu_gib).rollout_gib and offload.fits(gpu_gib):
        return (
            f"set {OFFLOAD_PARAM} and {OFFLOAD_OPTIMIZER}: true in models.<m>.overrides "
            f"(plan {offload.peak_gib:.0f} GiB/GPU)"
        )
    policy = shape.plan(gpu_gib, cpu_offload_policy=True)
    if policy.fits(gpu_gib):
        return (
            f"set {STRATEGY}: fsdp2 and {OFFLOAD_POLICY}: true in models.<m>.overrides (AdamW steps on the "
            f"host; plan {policy.peak_gib:.0f} GiB/GPU), or lower train.max_response_length / rollout_gpu_memory"
        )
    return "use larger GPUs, or lower train.max_prompt_length / max_response_length and train.rollout_gpu_memory"


# ----------------------------------------------------------------------------------------------
# Command line: the plan of every verl model of a config, per GPU count (the README table)
# ----------------------------------------------------------------------------------------------

# torch's total_memory of common data-centre GPUs, in GiB.
GPU_SIZES_GIB = {"80 GB": 79.2, "141 GB": 139.8}


def plan_table(runs: Sequence[RunSettings], gpu_counts: tuple[int, ...] = (1, 2, 4, 8)) -> str:
    """A markdown table: per run of ``runs`` with a verl model and a known parameter count, and per
    GPU count, the update and rollout peaks in GiB per GPU on 80 GB GPUs, and whether the run fits
    80 GB and 141 GB GPUs (vLLM's share scales with the GPU)."""
    from eqpo.runs import base_models

    rows = [
        "| model | GPUs | update (GiB/GPU) | rollout (GiB/GPU) | fits 80 GB | fits 141 GB |",
        "|---|---|---|---|---|---|",
    ]
    for settings in runs:
        model, entry = settings.model, settings.model_config
        n_params = base_models.parameters_of(entry, None)
        if entry.get("backend") != "verl" or n_params is None:
            continue
        shape = run_shape(entry, settings.train, n_params, entry.get("model_type"))
        for gpus in gpu_counts:
            small, large = (shape.plan(gib, gpus=gpus) for gib in GPU_SIZES_GIB.values())
            fits = [
                "yes" if plan.fits(gib) else "no"
                for plan, gib in zip((small, large), GPU_SIZES_GIB.values(), strict=False)
            ]
            rows.append(f"| {model} | {gpus} | {small.update_gib:.0f} | {small.rollout_gib:.0f} | {' | '.join(fits)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m eqpo.backends.verl.memory_plan", description=plan_table.__doc__)
    parser.add_argument("--configfile", nargs="*", default=[], help="overlays, as given to snakemake")
    parser.add_argument("--root", default=".", help="the repository root (holds config.yaml)")
    args = parser.parse_args(argv)
    config = load_config(args.configfile, Path(args.root))
    # each base model with the first method's settings (the table's rows)
    print(plan_table([RunSettings.from_config(config, model, config["methods"][0]) for model in config["base_models"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
