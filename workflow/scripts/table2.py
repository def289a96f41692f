from pathlib import Path

from eqpo.analysis.report_point import ReportPoint
from eqpo.runs.settings import ReproductionOptions
from eqpo.workflow.pipeline import logged, render_table2

with logged(snakemake.log[0]):
    render_table2(
        list(snakemake.input.metrics),
        Path(snakemake.output.csv).with_suffix(""),
        options=ReproductionOptions(**snakemake.params.options),
        point=ReportPoint.from_config({"report": snakemake.params.point}),
        dynamics=list(snakemake.input.dynamics),
        test_stem=Path(snakemake.output.test).with_suffix(""),
    )
