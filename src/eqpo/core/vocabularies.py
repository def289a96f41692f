"""The seven paper datasets: label vocabularies, task type and demographic attributes.

These are facts about the tasks (paper Section 4.1; label names from the CLIMB prompt templates the
authors used), shared by the reward parser, the grouping code, the demo cohort generator and the
metrics. A user's own dataset is described by a :class:`DatasetSpec` built the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTRIBUTES = ("sex", "age")


@dataclass(frozen=True)
class DatasetSpec:
    """What the method needs to know about one dataset (one RL "domain").

    name: the dataset key used everywhere (``dataset`` column, verl ``extra_info.dataset``).
    labels: the label vocabulary, in the order the prompt lists it.
    multi_label: True when the answer is a set of labels (CheXpert), False for one label per sample.
    attributes: which demographic attributes the dataset records, from ``ATTRIBUTES``; the explicit
        group of a sample is the intersection of these (paper Section 3; docs/method.md §1).
    """

    name: str
    labels: tuple[str, ...]
    multi_label: bool
    attributes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError(f"dataset {self.name!r}: the label vocabulary is empty")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"dataset {self.name!r}: duplicate labels in {self.labels}")
        unknown = set(self.attributes) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(
                f"dataset {self.name!r}: unknown demographic attribute(s) {sorted(unknown)}; use any of {ATTRIBUTES}"
            )


CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
SKIN_LABELS = ("Melanoma", "Nevus", "Basal Cell Carcinoma", "AKIEC", "Other")

PAPER_DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("CheXpert", CHEXPERT_LABELS, True, ("sex", "age")),
        DatasetSpec("Hemorrhage", ("No Hemorrhage", "Has Hemorrhage"), False, ("sex", "age")),
        DatasetSpec("VinDr-Mammo", tuple(f"BIRAD {k}" for k in range(1, 6)), False, ("age",)),
        DatasetSpec("ISIC-2020", ("Benign", "Malignant"), False, ("sex", "age")),
        DatasetSpec("HAM10000", SKIN_LABELS, False, ("sex", "age")),
        DatasetSpec("PAD-UFES-20", SKIN_LABELS, False, ("sex", "age")),
        DatasetSpec("COVID-BLUES", ("No COVID", "Has COVID"), False, ("age",)),
    )
}


# Datasets users bring (see eqpo.data.custom); looked up after the paper's seven.
CUSTOM_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make a user's dataset known to every part of the library (reward parsing, trainer, export)."""
    if spec.name in PAPER_DATASETS and PAPER_DATASETS[spec.name] != spec:
        raise ValueError(f"{spec.name!r} is a paper dataset; give your dataset another name")
    CUSTOM_DATASETS[spec.name] = spec
    return spec


def get_spec(dataset: str, registry: dict[str, DatasetSpec] | None = None) -> DatasetSpec:
    """Look up a dataset's spec (paper datasets, then registered ones), with an error that lists
    the known names."""
    registry = {**PAPER_DATASETS, **CUSTOM_DATASETS} if registry is None else registry
    try:
        return registry[dataset]
    except KeyError:
        raise KeyError(
            f"unknown dataset {dataset!r}; known: {sorted(registry)}. "
            "Describe your own dataset in the config under data.custom (or register a "
            "eqpo.core.vocabularies.DatasetSpec with register_dataset)."
        ) from None
