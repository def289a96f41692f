from eqpo.workflow.pipeline import logged

with logged(snakemake.log[0]):
    from eqpo.workflow.trl import train_rule

    train_rule(snakemake)
