# EQPO (FairGRPO) reproduction workflow.
#   paper:  snakemake --profile slurm                      (GPU backend, the seven datasets)
#   demo:   snakemake --cores 2 --configfile config/demo.yaml
# Rules live in workflow/rules/*.smk; helpers in workflow/rules/common.smk.
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/trl.smk"
include: "workflow/rules/verl_cpu.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_targets(),
    default_target: True
