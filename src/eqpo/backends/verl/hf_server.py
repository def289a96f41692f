"""The ``hf`` rollout's server: a Ray actor that generates with Hugging Face ``generate`` on CPU.

It keeps verl 0.9.1's server contract (what ``LLMServerClient`` and the replica call on a vLLM
server): token ids in, :class:`verl.workers.rollout.replica.TokenOutput` out (response ids, their
log-probabilities under the unscaled model, ``extra_fields["global_steps"]`` of the weights that
produced them, which verl's step metrics require), ``update_weights`` from the FSDP workers, and the
sleep/wake/abort/cache/profile controls, which have nothing to do without an accelerator. Requests are
served one at a time.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import torch


def _load(model_path: str, trust_remote_code: bool):
    """The model verl trains (image-text-to-text for vision-language configs, else causal LM) and, for
    a vision-language model, its processor."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    vision = hasattr(config, "vision_config")
    cls = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = cls.from_pretrained(model_path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code) if vision else None
    return model.eval(), processor


class HFServer:
    """One replica's generation server (see the module docstring)."""

    def __init__(self, model_path: str, trust_remote_code: bool, response_length: int, seed: int):
        from eqpo.backends.verl.cpu_images import image_only_processors

        image_only_processors()  # this actor loads the processor itself
        self.model, self.processor = _load(model_path, trust_remote_code)
        generation = self.model.generation_config
        self.eos_token_id = generation.eos_token_id
        self.pad_token_id = generation.pad_token_id if generation.pad_token_id is not None else generation.eos_token_id
        self.response_length = int(response_length)
        self.global_steps: int | None = None
        self.weight_syncs = 0
        self._lock = asyncio.Lock()
        self._generator = torch.Generator().manual_seed(int(seed))
        self._forward_inputs = set(inspect.signature(self.model.forward).parameters)
        # Gemma3 attends bidirectionally within an image, marked by token_type_ids (as verl's actor does)
        self._image_token_id = (
            getattr(self.model.config, "image_token_id", None) if self.model.config.model_type == "gemma3" else None
        )

    def ready(self) -> bool:
        return True

    def update_weights(self, state: dict[str, torch.Tensor], global_steps: int | None = None) -> dict[str, Any]:
        """Load the trainer's full weights (HF names, as verl's FSDP engine gives them). Every name must be
        a parameter or buffer of the model and every parameter must be given (tied weights excepted):
        a partial load would generate from a model nobody trained."""
        own = self.model.state_dict()
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise KeyError(
                f"the trainer sent weights the rollout model does not have: {unknown[:5]} ({len(unknown)} in all)"
            )
        result = self.model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
        tied = set(getattr(self.model, "_tied_weights_keys", None) or [])
        missing = [k for k in result.missing_keys if k not in tied and not k.endswith("lm_head.weight")]
        if missing:
            raise KeyError(f"the trainer sent no weights for {missing[:5]} ({len(missing)} in all)")
        if global_steps is not None:
            self.global_steps = int(global_steps)
        self.weight_syncs += 1
        return {"tensors": len(state), "global_steps": self.global_steps, "syncs": self.weight_syncs}

    def _vision_inputs(self, image_data) -> dict[str, torch.Tensor]:
        if not image_data:
            return {}
        if self.processor is None:
            raise ValueError("images were given to a text-only model")
        out = self.processor.image_processor(images=list(image_data), return_tensors="pt")
        return {key: value for key, value in out.items() if key in self._forward_inputs}  # not e.g. num_crops

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: list | None = None,
        video_data: list | None = None,
        **kwargs,
    ):
        """Sample one response to ``prompt_ids`` (image placeholders already expanded by verl)."""
        if video_data:
            raise ValueError("the hf rollout reads images only (video needs torchvision)")
        params = dict(sampling_params)
        max_tokens = params.pop("max_tokens", params.pop("max_new_tokens", None)) or self.response_length
        max_tokens = max(1, min(int(max_tokens), self.response_length))
        temperature = float(params.get("temperature", 1.0) or 0.0)
        options: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "return_dict_in_generate": True,
            "output_logits": True,
        }
        if temperature > 0:
            top_k = int(params.get("top_k", -1) or -1)
            options.update(
                do_sample=True,
                temperature=temperature,
                top_p=float(params.get("top_p", 1.0) or 1.0),
                top_k=top_k if top_k > 0 else None,
            )
        else:
            options.update(do_sample=False)
        vision = self._vision_inputs(image_data)
        async with self._lock:
            return await asyncio.to_thread(self._generate, list(prompt_ids), options, vision)

    @torch.no_grad()
    def _generate(self, prompt_ids: list[int], options: dict[str, Any], vision: dict[str, torch.Tensor]):
        from verl.workers.rollout.replica import TokenOutput

        ids = torch.tensor([prompt_ids], dtype=torch.long)
        if self._image_token_id is not None:
            vision = {**vision, "token_type_ids": (ids == self._image_token_id).long()}
        # generate samples from torch's global generator: run it on this server's own stream
        state = torch.get_rng_state()
        torch.set_rng_state(self._generator.get_state())
        try:
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **vision, **options)
            self._generator.set_state(torch.get_rng_state())
        finally:
            torch.set_rng_state(state)
        tokens = out.sequences[0, ids.shape[1] :].tolist()
        logprobs = [
            float(torch.log_softmax(step[0].float(), -1)[token])
            for step, token in zip(out.logits, tokens, strict=False)
        ]
        return TokenOutput(
            token_ids=tokens,
            log_probs=logprobs,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    # The controls verl's replica and checkpoint manager call on a server (nothing to free on a CPU).
    async def wake_up(self):
        return None

    async def sleep(self):
        return None

    async def abort_all_requests(self, reject_request: bool = False):
        return None

    async def resume_generation(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None
