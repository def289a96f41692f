"""Turn the files the training runs wrote into the paper's tables and figures.

Submodules: :mod:`~eqpo.analysis.style` (method order, names, colours),
:mod:`~eqpo.analysis.collect` (readers of metrics.json, dynamics.jsonl, steps.jsonl and
clusters.parquet),
:mod:`~eqpo.analysis.tables` (Table 2, cluster stability, timing; CSV/Markdown/LaTeX writers),
:mod:`~eqpo.analysis.report_point` (which point of a run Table 2 reports),
:mod:`~eqpo.analysis.plan` (GPU-hours and disk of a configuration, before it runs) and
:mod:`~eqpo.analysis.figures` (matplotlib figures; imported on demand as it needs matplotlib).
"""

from eqpo.analysis.collect import (
    estimator_statistics,
    parse_run_path,
    read_clusters,
    read_dynamics,
    read_group_tables,
    read_metrics,
    read_steps,
    read_unparseable_share,
)
from eqpo.analysis.style import METHOD_COLORS, METHOD_LABELS, METHOD_ORDER, model_label
from eqpo.analysis.tables import (
    cluster_stability,
    cluster_stability_summary,
    table2,
    table2_long,
    table2_std,
    timing_summary,
    write_table,
)

__all__ = [
    "METHOD_COLORS",
    "METHOD_LABELS",
    "METHOD_ORDER",
    "cluster_stability",
    "cluster_stability_summary",
    "estimator_statistics",
    "model_label",
    "parse_run_path",
    "read_clusters",
    "read_dynamics",
    "read_group_tables",
    "read_metrics",
    "read_steps",
    "read_unparseable_share",
    "table2",
    "table2_long",
    "table2_std",
    "timing_summary",
    "write_table",
]
