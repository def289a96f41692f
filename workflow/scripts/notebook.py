"""Execute a notebook with papermill: parameters injected, the executed notebook kept as an output."""

from eqpo.workflow.pipeline import logged

with logged(snakemake.log[0]):
    import papermill  # inside the log: a missing papermill is reported there

    papermill.execute_notebook(
        snakemake.input.nb,
        snakemake.output.nb,
        parameters=snakemake.params.parameters,
        kernel_name="python3",
        log_output=True,
        progress_bar=False,
    )
