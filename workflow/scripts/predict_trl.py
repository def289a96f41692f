from eqpo.pipeline import logged

with logged(snakemake.log[0]):
    from eqpo.trl.workflow import predict_rule

    predict_rule(snakemake)
