from eqpo.pipeline import logged

with logged(snakemake.log[0]):
    from eqpo.trl.workflow import train_rule

    train_rule(snakemake)
