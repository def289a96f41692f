"""The ``hf`` rollout: verl 0.9.1's v1 rollout contract served by Hugging Face ``generate`` on CPU.

verl's v1 trainer always talks to rollout *servers* (``RolloutReplica`` + a token-in/token-out
``generate`` handle + a ``BaseRollout`` adapter inside the FSDP worker that pushes new weights after
every update); it ships replicas for vLLM, SGLang and TRT-LLM only, none of which runs without a GPU.
This module adds one more, for ``actor_rollout_ref.rollout.name=hf`` on the CPU platform
(:mod:`eqpo.backends.verl.cpu` registers it; never on a GPU run):

- :class:`HFReplica` (``RolloutReplicaRegistry``): starts one :class:`~eqpo.backends.verl.hf_server.HFServer`
  Ray actor per replica, named so that the workers can find it;
- :class:`HFServerAdapter` (``_ROLLOUT_REGISTRY[("hf", "async")]``), in each FSDP worker: on every
  weight sync it gathers the full tensors (a collective over the FSDP ranks) and the replica's leader
  rank sends them, with verl's ``global_steps``, to the server, which loads them strictly.

Written against verl 0.9.1's internal rollout API (``RolloutReplica``, ``TokenOutput``, the server
method set, ``update_weights``' keyword arguments); :func:`eqpo.backends.verl.cpu.check_verl` stops on
another verl.
"""

from __future__ import annotations

import logging
import os

from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry

logger = logging.getLogger(__name__)

ADAPTER = f"{__name__}.HFServerAdapter"


def server_name(replica_rank: int) -> str:
    """The Ray actor name of a replica's server (found by the FSDP workers on weight sync)."""
    return f"eqpo_hf_rollout_server_{replica_rank}"


def _model_path(model_config) -> str:
    from verl.utils.fs import copy_to_local

    local = getattr(model_config, "local_path", None)
    if local is None and hasattr(model_config, "get"):
        local = model_config.get("local_path", None)
    path = local or (model_config.get("path") if hasattr(model_config, "get") else model_config.path)
    return copy_to_local(path)


class HFReplica(RolloutReplica):
    """One rollout replica served by an :class:`~eqpo.backends.verl.hf_server.HFServer` actor (no GPU)."""

    async def launch_servers(self):
        import ray

        from eqpo.backends.verl.hf_server import HFServer

        config, model = self.config, self.model_config
        trust = bool(
            model.get("trust_remote_code", False)
            if hasattr(model, "get")
            else getattr(model, "trust_remote_code", False)
        )
        seed = int(getattr(config, "seed", 0) or 0)
        actor = ray.remote(num_cpus=0)(HFServer).options(
            name=server_name(self.replica_rank), max_concurrency=self.max_concurrency
        )
        handle = actor.remote(_model_path(model), trust, int(config.response_length), seed + self.replica_rank)
        await handle.ready.remote()
        self.servers = [handle]
        self._server_handle = handle
        self._server_address = f"hf-rollout-{self.replica_rank}"

    def rollout_worker_use_gpu(self) -> bool:
        return False


class HFServerAdapter(rollout_base.BaseRollout):
    """In each hybrid FSDP worker: sends the trainer's weights to its replica's HF server."""

    def __init__(self, config, model_config, device_mesh, *args, **kwargs):
        super().__init__(config, model_config, device_mesh)
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank = rank // world
        self.is_leader = rank % world == 0
        self.sleep_level = 2
        self.last_sync: dict = {}

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs):
        if wire_format != "named_tensors":
            raise ValueError(
                f"the hf rollout takes full named tensors, not {wire_format!r} "
                "(actor_rollout_ref.rollout.checkpoint_engine.backend must stay 'naive')"
            )
        if kwargs.get("peft_config") is not None:
            raise ValueError("the hf rollout does not take LoRA adapters; train without actor_rollout_ref.model.lora")
        state = {}
        for name, tensor in weights:
            if hasattr(tensor, "full_tensor"):  # DTensor shard: every FSDP rank takes part in the gather
                tensor = tensor.full_tensor()
            state[name] = tensor.detach().to("cpu", copy=True)
        if not self.is_leader:
            return
        import ray

        server = ray.get_actor(server_name(self.replica_rank))
        self.last_sync = await server.update_weights.remote(state, kwargs.get("global_steps"))
        logger.info("hf rollout weight sync: %s", self.last_sync)


def register(name: str) -> None:
    """Make ``rollout.name=<name>`` (``hf``) known to verl's two rollout registries (idempotent)."""
    rollout_base._ROLLOUT_REGISTRY[(name, "async")] = ADAPTER
    RolloutReplicaRegistry.register(name, lambda: HFReplica)
