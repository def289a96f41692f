from pathlib import Path

from eqpo.pipeline import logged, render_table2

with logged(snakemake.log[0]):
    render_table2(list(snakemake.input), Path(snakemake.output.csv).with_suffix(""), options=snakemake.config)
