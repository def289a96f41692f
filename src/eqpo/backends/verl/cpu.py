"""verl 0.9.1's own training loop on a machine without an accelerator (``train.device: cpu``).

Used to check the verl path on a laptop (``config/verl_cpu.yaml``) and by the tests that run verl's
real loop. Nothing here is active unless a run asks for it: the launcher sets ``VERL_PLATFORM=cpu``
in verl's environment only when the config says ``train.device: cpu``, and the platform never
offers itself to verl's auto-detection, so a GPU node always gets verl's CUDA platform.

With ``VERL_PLATFORM=cpu`` (every verl process imports this module first, through
``VERL_USE_EXTERNAL_MODULES=eqpo.backends.verl``):

- :class:`CpuPlatform` is verl's platform (``PlatformRegistry``): device ``cpu``, process-group
  backend gloo, and the Ray resource ``GPU``, of which the launcher gives Ray logical units
  (``ray_init.num_gpus``) only so that verl's placement groups can be scheduled; no CUDA call is made.
- verl's ``initialize_global_process_group_ray`` defaults to plain ``gloo``: its own default
  ``"cpu:gloo,{device}:{backend}"`` names the CPU twice on this platform, which torch refuses.
- the ``hf`` rollout (:mod:`eqpo.backends.verl.hf_rollout`) is registered: verl's v1 trainer starts only
  rollout servers (vLLM, SGLang, TRT-LLM), none of which runs on a CPU.
- without torchvision (no CPU wheel pairs with the CPU torch), images are opened with PIL
  (:class:`eqpo.backends.verl.cpu_dataset.PilImageDataset`, ``data.custom_cls``) and processors get an
  image-only video processor.

:data:`CPU_OVERRIDES` and :func:`cpu_environment` are what the launcher adds for such a run. All of
it is written against verl 0.9.1; :func:`check_verl` stops with a clear error when the registries it
relies on are not where 0.9.1 has them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from eqpo.backends.verl.cpu_images import image_only_processors

PLATFORM = "cpu"
PLATFORM_ENV = "VERL_PLATFORM"
VERL_VERSION = "0.9.1"
ROLLOUT = "hf"
# verl/workers/engine/base.py picks the training engine by device; verl registers its FSDP engine
# for cuda and npu only, and VERL_ENGINE_DEVICE is its own way to choose one by name.
ENGINE_DEVICE_ENV = "VERL_ENGINE_DEVICE"
DATASET_CLASS = "PilImageDataset"

# Hydra overrides of a CPU run (added by the launcher after the paper's keys, before the model's own).
CPU_OVERRIDES: dict[str, Any] = {
    "trainer.device": "cpu",
    "actor_rollout_ref.rollout.name": ROLLOUT,
    # verl's FSDP1 wrapper passes an integer device id (an accelerator) to FSDP; FSDP2 does not.
    "actor_rollout_ref.actor.strategy": "fsdp2",
    "actor_rollout_ref.actor.use_torch_compile": False,
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile": False,
    "actor_rollout_ref.actor.fsdp_config.dtype": "float32",
    "actor_rollout_ref.rollout.agent.num_workers": 1,
    "reward.num_workers": 1,
    "data.dataloader_num_workers": 0,
    "transfer_queue.backend.SimpleStorage.num_data_storage_units": 1,
    "data.custom_cls.path": "pkg://eqpo.backends.verl.cpu_dataset",
    "data.custom_cls.name": DATASET_CLASS,
}
# Ray's logical GPUs = trainer.n_gpus_per_node (verl counts placement-group bundles as GPUs).
RAY_GPUS_KEY = "+ray_kwargs.ray_init.num_gpus"
# Logical Ray CPUs of a local CPU run: TransferQueue's controller and storage unit, the TaskRunner,
# the agent-loop and reward workers each hold one (they share the machine's real cores).
RAY_CPUS = 8


class VerlVersionError(RuntimeError):
    """The installed verl is not the one this CPU support was written against."""


def active() -> bool:
    """True in a process of a CPU run (``VERL_PLATFORM=cpu``)."""
    return os.environ.get(PLATFORM_ENV, "").strip().lower() == PLATFORM


def cpu_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` with what verl's processes of a CPU run need: the platform, the FSDP engine's device
    name, one BLAS thread per process (a laptop's cores are shared by a dozen Ray processes)."""
    out = dict(env)
    out[PLATFORM_ENV] = PLATFORM
    out[ENGINE_DEVICE_ENV] = "cuda"
    out.setdefault("OMP_NUM_THREADS", "1")
    out.setdefault("MKL_NUM_THREADS", "1")
    out.setdefault("TOKENIZERS_PARALLELISM", "false")
    return out


def check_version() -> None:
    """Raise :class:`VerlVersionError` unless the installed verl is 0.9.1."""
    import verl

    if verl.__version__ != VERL_VERSION:
        raise VerlVersionError(
            f"eqpo.backends.verl.cpu is written for verl {VERL_VERSION}, found {verl.__version__}: "
            f"pip install 'verl[verl-core]=={VERL_VERSION}'"
        )


def check_verl() -> None:
    """Raise :class:`VerlVersionError` unless verl is 0.9.1 with the registries this module uses."""
    check_version()
    missing = []
    from verl.plugin.platform import platform_manager

    if not hasattr(platform_manager, "PlatformRegistry"):
        missing.append("verl.plugin.platform.platform_manager.PlatformRegistry")
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout import replica

    if not isinstance(getattr(rollout_base, "_ROLLOUT_REGISTRY", None), dict):
        missing.append("verl.workers.rollout.base._ROLLOUT_REGISTRY")
    if not hasattr(replica, "RolloutReplicaRegistry"):
        missing.append("verl.workers.rollout.replica.RolloutReplicaRegistry")
    from verl.utils import distributed

    defaults = getattr(distributed.initialize_global_process_group_ray, "__defaults__", None)
    if defaults is None or len(defaults) != 2:
        missing.append("verl.utils.distributed.initialize_global_process_group_ray(timeout_second, backend)")
    if missing:
        raise VerlVersionError(
            "verl changed where eqpo.backends.verl.cpu registers the CPU platform and the hf rollout: "
            + ", ".join(missing)
            + f" not found (written for verl {VERL_VERSION})"
        )


# ----------------------------------------------------------------------------------------------
# The platform
# ----------------------------------------------------------------------------------------------


def _nothing(*args, **kwargs) -> None:
    return None


def _cpu_device_module() -> SimpleNamespace:
    """What verl calls on ``get_torch_device()``: cache, memory and synchronisation calls do nothing,
    random states are torch's global ones. Memory figures are 0 (verl only logs them)."""
    import torch

    free = 64 << 30  # verl's memory log only; nothing is sized from it
    return SimpleNamespace(
        empty_cache=_nothing,
        synchronize=_nothing,
        set_device=_nothing,
        ipc_collect=_nothing,
        set_per_process_memory_fraction=_nothing,
        reset_peak_memory_stats=_nothing,
        is_available=lambda: True,
        device_count=lambda: 1,
        current_device=lambda: 0,
        get_device_name=lambda *a, **k: "cpu",
        mem_get_info=lambda *a, **k: (free, free),
        memory_allocated=lambda *a, **k: 0,
        memory_reserved=lambda *a, **k: 0,
        max_memory_allocated=lambda *a, **k: 0,
        max_memory_reserved=lambda *a, **k: 0,
        get_rng_state=lambda *a, **k: torch.get_rng_state(),
        set_rng_state=lambda state, *a, **k: torch.set_rng_state(state),
        manual_seed=torch.manual_seed,
        manual_seed_all=torch.manual_seed,
        Stream=None,
        Event=None,
    )


def _register_platform() -> type:
    from verl.plugin.platform.platform_base import PlatformBase
    from verl.plugin.platform.platform_manager import PlatformRegistry

    class CpuPlatform(PlatformBase):
        """verl's platform for a run without accelerator; chosen only by ``VERL_PLATFORM=cpu``."""

        _module = None

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self):
            if CpuPlatform._module is None:
                CpuPlatform._module = _cpu_device_module()
            return CpuPlatform._module

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            return False  # never auto-detected: only VERL_PLATFORM=cpu selects it

        def current_device(self):
            # verl moves tensors with .to(get_device_id()): "cpu", where an int would mean an accelerator
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: int | None = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            import torch

            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            self.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0):
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            return "GPU"  # logical units given to Ray by ray_init.num_gpus; they only place workers

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self):
            return None

    PlatformRegistry.register(platform=PLATFORM)(CpuPlatform)
    return CpuPlatform


# ----------------------------------------------------------------------------------------------
# Registration (VERL_PLATFORM=cpu only)
# ----------------------------------------------------------------------------------------------


def _gloo_process_groups() -> None:
    """verl/utils/distributed.py builds ``"cpu:gloo,{device}:{backend}"`` = "cpu:gloo,cpu:gloo" here,
    which torch refuses (duplicate device type); default its backend to plain gloo. Changing the
    function's defaults reaches the modules that imported it by name (engine_workers)."""
    from verl.utils import distributed

    distributed.initialize_global_process_group_ray.__defaults__ = (None, "gloo")


def register() -> bool:
    """Register the CPU platform, the hf rollout and the patches in this process when
    ``VERL_PLATFORM=cpu``; returns whether it did. Raises :class:`VerlVersionError` on another verl."""
    if not active():
        return False
    check_version()
    _register_platform()  # first: verl modules imported below ask for the platform at import time
    check_verl()
    _gloo_process_groups()
    image_only_processors()
    from eqpo.backends.verl import hf_rollout

    hf_rollout.register(ROLLOUT)
    return True
