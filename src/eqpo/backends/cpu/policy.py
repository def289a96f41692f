"""The CPU backend's policy: a small multi-task classifier that "answers" in text.

One head per dataset on a shared trunk: categorical over the label vocabulary for single-label
datasets, independent Bernoulli per class for multi-label ones (CheXpert). A rollout is a sampled
label set rendered as ``<think>..</think> \\boxed{A, B}`` and scored by :mod:`eqpo.core.rewards`, so the
reward and the parsing are the same code the GPU path uses.

Two architectures stand in for two base models: ``linear`` (heads directly on the features) and
``mlp`` (a two-layer tanh trunk shared by all datasets).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from eqpo.core.vocabularies import DatasetSpec

ARCHITECTURES = ("linear", "mlp")


@dataclass(frozen=True)
class PolicyConfig:
    """arch: "linear" or "mlp"; n_features: input width (the widest dataset's); hidden: trunk width
    (mlp only); input_widths: per-dataset input width where datasets differ (dataset -> n: the
    dataset reads f0..f{n-1}, the columns after those are zero for it), None when all use n_features."""

    arch: str
    n_features: int
    hidden: int = 32
    input_widths: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown CPU policy architecture {self.arch!r}; choose one of {ARCHITECTURES}")
        bad = {d: w for d, w in (self.input_widths or {}).items() if not 1 <= w <= self.n_features}
        if bad:
            raise ValueError(f"input widths {bad} are not between 1 and n_features={self.n_features}")

    def width(self, dataset: str) -> int:
        return (self.input_widths or {}).get(dataset, self.n_features)


class MultiTaskPolicy(nn.Module):
    """Shared trunk + one head per dataset. ``logits(x, dataset)``: (B, n_features) -> (B, n_labels)."""

    def __init__(self, config: PolicyConfig, specs: list[DatasetSpec]):
        super().__init__()
        self.config = config
        self.specs = {spec.name: spec for spec in specs}
        if config.arch == "mlp":
            self.trunk: nn.Module = nn.Sequential(
                nn.Linear(config.n_features, config.hidden),
                nn.Tanh(),
                nn.Linear(config.hidden, config.hidden),
                nn.Tanh(),
            )
            width = config.hidden
        else:
            self.trunk = nn.Identity()
            width = config.n_features
        self.heads = nn.ModuleList([nn.Linear(width, len(spec.labels)) for spec in specs])
        self._head_of = {spec.name: i for i, spec in enumerate(specs)}

    def logits(self, x: torch.Tensor, dataset: str) -> torch.Tensor:
        width = self.config.width(dataset)
        if width < x.shape[-1]:  # a narrower dataset: its columns beyond its width are zero
            x = torch.nn.functional.pad(x[..., :width], (0, x.shape[-1] - width))
        return self.heads[self._head_of[dataset]](self.trunk(x))

    def distribution(self, x: torch.Tensor, dataset: str, temperature: float = 1.0):
        logits = self.logits(x, dataset) / temperature
        if self.specs[dataset].multi_label:
            return torch.distributions.Independent(torch.distributions.Bernoulli(logits=logits), 1)
        return torch.distributions.Categorical(logits=logits)

    def greedy(self, x: torch.Tensor, dataset: str) -> torch.Tensor:
        """Deterministic answer: argmax class, or every class with probability > 0.5."""
        logits = self.logits(x, dataset)
        if self.specs[dataset].multi_label:
            return (logits > 0).to(torch.int64)
        return logits.argmax(dim=-1)

    def meta(self) -> dict:
        return {"config": asdict(self.config), "datasets": [asdict(s) for s in self.specs.values()]}

    @classmethod
    def from_meta(cls, meta: dict) -> MultiTaskPolicy:
        specs = [
            DatasetSpec(d["name"], tuple(d["labels"]), d["multi_label"], tuple(d["attributes"]))
            for d in meta["datasets"]
        ]
        return cls(PolicyConfig(**meta["config"]), specs)


def action_labels(action: np.ndarray, spec: DatasetSpec) -> list[str]:
    """A sampled action -> label list: class index (single-label) or 0/1 vector (multi-label)."""
    if spec.multi_label:
        return [label for label, on in zip(spec.labels, action, strict=False) if on]
    return [spec.labels[int(action)]]


def labels_to_target(labels: list[list[str]], spec: DatasetSpec) -> torch.Tensor:
    """Label lists -> class indices (single-label) or a (B, C) 0/1 float matrix (multi-label)."""
    index = {label: i for i, label in enumerate(spec.labels)}
    if spec.multi_label:
        target = torch.zeros(len(labels), len(spec.labels))
        for row, items in enumerate(labels):
            target[row, [index[item] for item in items]] = 1.0
        return target
    return torch.tensor([index[items[0]] for items in labels], dtype=torch.int64)
