report: "../report/workflow.rst"


rule table2:
    """Paper Table 2: every method x base model, mean over seeds (CSV raw, Markdown/LaTeX paper scales)."""
    input:
        runs(f"{RUN}/metrics.json"),
    output:
        csv=report(f"{RESULTS}/tables/table2.csv", caption="../report/table2.rst", category="Tables"),
        md=f"{RESULTS}/tables/table2.md",
        tex=f"{RESULTS}/tables/table2.tex",
    log:
        f"{LOGS}/table2.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/table2.py"


rule figure_dynamics:
    """Paper Fig. 2 (a-c): F1, Acc and delta_F1 on the validation split over training steps."""
    input:
        f"{RESULTS}/dynamics.csv",
    output:
        png=report(f"{FIGURES}/training_dynamics.png", caption="../report/training_dynamics.rst", category="Figures"),
        pdf=f"{FIGURES}/training_dynamics.pdf",
    log:
        f"{LOGS}/figure_dynamics.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/figure_dynamics.py"


rule figure_group_f1:
    """Paper Table 4 / Fig. 3: test F1 per demographic group and dataset, EQPO vs GRPO."""
    input:
        runs(f"{RUN}/metrics.json", compared_methods()),
    output:
        png=report(f"{FIGURES}/group_f1.png", caption="../report/group_f1.rst", category="Figures"),
        pdf=f"{FIGURES}/group_f1.pdf",
    log:
        f"{LOGS}/figure_group_f1.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/figure_group_f1.py"


rule figure_cluster_stability:
    input:
        f"{RESULTS}/cluster_stability.csv",
    output:
        png=report(f"{FIGURES}/cluster_stability.png", caption="../report/cluster_stability_figure.rst", category="Figures"),
        pdf=f"{FIGURES}/cluster_stability.pdf",
    log:
        f"{LOGS}/figure_cluster_stability.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/figure_cluster_stability.py"
