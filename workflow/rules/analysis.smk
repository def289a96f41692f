rule dynamics:
    """Validation curves and per-step timings of every run in one table each."""
    input:
        dynamics=runs(f"{RUN}/dynamics.jsonl"),
        steps=runs(f"{RUN}/steps.jsonl"),
    output:
        dynamics=f"{RESULTS}/dynamics.csv",
        steps=f"{RESULTS}/steps.csv",
        timing=f"{RESULTS}/tables/timing.csv",
    log:
        f"{LOGS}/dynamics.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/dynamics.py"


rule cluster_stability:
    """Implicit groups vs masked demographics (ARI/NMI), agreement between consecutive logged
    steps and the chosen k, for the methods that cluster (eqpo.core.methods.CLUSTERING)."""
    input:
        runs(f"{RUN}/clusters.parquet", hierarchical_methods()),
    output:
        per_step=f"{RESULTS}/cluster_stability.csv",
        table=report(
            f"{RESULTS}/tables/cluster_stability.csv",
            caption="../report/cluster_stability.rst",
            category="Tables",
        ),
        md=f"{RESULTS}/tables/cluster_stability.md",
        tex=f"{RESULTS}/tables/cluster_stability.tex",
    log:
        f"{LOGS}/cluster_stability.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/cluster_stability.py"
