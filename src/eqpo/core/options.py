"""The values of each reproduction option, listed once. Where the paper text and the authors'
released code differ (docs/method.md §7), each choice is an option; the first value is the
reproduction default (the authors' code), as :class:`eqpo.runs.settings.ReproductionOptions` and
config.yaml have it. :mod:`eqpo.core.metrics`, :mod:`eqpo.core.rewards`, :mod:`eqpo.core.groups` and
:mod:`eqpo.runs.settings` import them; tests/runs/test_settings_vocabularies.py holds the schema's enums
to them."""

CLASS_SETS = ("group_present", "dataset")  # metrics.class_set
EXTRACTIONS = ("first_box", "last_box")  # metrics.extraction
GROUP_DEFINITIONS = ("authors_code", "paper")  # groups.definition
REWARD_FUNCTIONS = ("authors_composite", "exact", "f1", "qoq_med3")  # reward.function
MATCHINGS = ("strict", "lenient")  # reward.matching
