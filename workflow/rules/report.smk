report: "../report/workflow.rst"


rule table2:
    """Paper Table 2: every method x base model, mean over seeds, at the point report.point names
    (CSV raw, Markdown/LaTeX paper scales); table2_test: the final checkpoints on the test split."""
    input:
        metrics=runs(f"{RUN}/metrics.json"),
        dynamics=runs(f"{RUN}/dynamics.jsonl"),
    output:
        csv=report(f"{RESULTS}/tables/table2.csv", caption="../report/table2.rst", category="Tables"),
        md=f"{RESULTS}/tables/table2.md",
        tex=f"{RESULTS}/tables/table2.tex",
        test=f"{RESULTS}/tables/table2_test.csv",
        test_md=f"{RESULTS}/tables/table2_test.md",
        test_tex=f"{RESULTS}/tables/table2_test.tex",
    params:
        point={k: config["report"].get(k) for k in ("point", "step", "steps")},  # rerun when it changes
        options=OPTIONS.as_dict(),
    log:
        f"{LOGS}/table2.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/table2.py"


rule uncertainty:
    """Bootstrap intervals of every Table 2 metric and paired bootstrap tests of EQPO vs each baseline."""
    input:
        runs(f"{RUN}/predictions.parquet"),
    output:
        ci=report(f"{RESULTS}/tables/table2_ci.csv", caption="../report/table2_ci.rst", category="Tables"),
        ci_md=f"{RESULTS}/tables/table2_ci.md",
        tests=report(f"{RESULTS}/tables/paired_tests.csv", caption="../report/paired_tests.rst", category="Tables"),
        p=f"{RESULTS}/tables/paired_tests_p.csv",
    params:
        n_boot=config["report"]["n_boot"],
        level=config["report"]["level"],
        class_set=OPTIONS.class_set,
    log:
        f"{LOGS}/uncertainty.log",
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/uncertainty.py"


rule paper_comparison:
    """Table 2 and Table 4 next to the paper's numbers; the paper's claims recomputed from ours."""
    input:
        metrics=runs(f"{RUN}/metrics.json"),
        steps=runs(f"{RUN}/steps.jsonl"),
        dynamics=runs(f"{RUN}/dynamics.jsonl"),
    output:
        table2=report(f"{RESULTS}/tables/paper_vs_ours_table2.csv", caption="../report/paper_vs_ours.rst", category="Paper vs reproduction"),
        table4=report(f"{RESULTS}/tables/paper_vs_ours_table4.csv", caption="../report/paper_vs_ours.rst", category="Paper vs reproduction"),
        claims=report(f"{RESULTS}/tables/claims.csv", caption="../report/claims.rst", category="Paper vs reproduction"),
    params:
        config=config,
    log:
        f"{LOGS}/paper_comparison.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/paper_comparison.py"


rule paper_tables:
    """Paper Table 3 (the settings actually used), Table 4 and the per-group Tables 5-17."""
    input:
        runs(f"{RUN}/metrics.json"),
    output:
        table3=report(f"{RESULTS}/tables/table3.csv", caption="../report/table3.rst", category="Tables"),
        table4=report(f"{RESULTS}/tables/table4.csv", caption="../report/table4.rst", category="Tables"),
        per_group=report(
            directory(f"{RESULTS}/tables/per_group"),
            patterns=["{name}.csv"],
            caption="../report/per_group.rst",
            category="Tables",
        ),
    params:
        config=config,
    log:
        f"{LOGS}/paper_tables.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/paper_tables.py"


rule notebook_training_dynamics:
    """Paper Fig. 2 (a-e), executed as a papermill notebook (kept in results/<experiment>/notebooks)."""
    input:
        nb=workflow.source_path("../../notebooks/training_dynamics.ipynb"),
        dynamics=f"{RESULTS}/dynamics.csv",
        steps=f"{RESULTS}/steps.csv",
    output:
        nb=f"{RESULTS}/notebooks/training_dynamics.ipynb",
        dynamics=report(f"{FIGURES}/training_dynamics.png", caption="../report/training_dynamics.rst", category="Figures"),
        runtime=report(f"{FIGURES}/runtime_split.png", caption="../report/runtime_split.rst", category="Figures"),
        pareto=report(f"{FIGURES}/pareto.png", caption="../report/pareto.rst", category="Figures"),
        pdfs=[f"{FIGURES}/{name}.pdf" for name in ("training_dynamics", "runtime_split", "pareto")],
    params:
        parameters=notebook_parameters(dynamics_csv="dynamics", steps_csv="steps", figure_dir=FIGURES),
    log:
        f"{LOGS}/notebook_training_dynamics.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/notebook.py"


rule notebook_group_fairness:
    """Paper Fig. 3 (per-group F1, EQPO vs GRPO) with Table 4, as a papermill notebook."""
    input:
        nb=workflow.source_path("../../notebooks/group_fairness.ipynb"),
        metrics=runs(f"{RUN}/metrics.json", compared_methods()),
        table4=f"{RESULTS}/tables/table4.csv",
    output:
        nb=f"{RESULTS}/notebooks/group_fairness.ipynb",
        png=report(f"{FIGURES}/group_f1.png", caption="../report/group_f1.rst", category="Figures"),
        pdf=f"{FIGURES}/group_f1.pdf",
    params:
        parameters=notebook_parameters(metrics_files="metrics", table_dir=f"{RESULTS}/tables", figure_dir=FIGURES),
    log:
        f"{LOGS}/notebook_group_fairness.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/notebook.py"


rule notebook_cluster_stability:
    """Cluster-stability figure with its summary table, as a papermill notebook."""
    input:
        nb=workflow.source_path("../../notebooks/cluster_stability.ipynb"),
        stability=f"{RESULTS}/cluster_stability.csv",
        summary=f"{RESULTS}/tables/cluster_stability.md",
    output:
        nb=f"{RESULTS}/notebooks/cluster_stability.ipynb",
        png=report(f"{FIGURES}/cluster_stability.png", caption="../report/cluster_stability_figure.rst", category="Figures"),
        pdf=f"{FIGURES}/cluster_stability.pdf",
    params:
        parameters=notebook_parameters(stability_csv="stability", summary_md="summary", figure_dir=FIGURES),
    log:
        f"{LOGS}/notebook_cluster_stability.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/notebook.py"


rule plan:
    """The compute plan: GPU-hours and peak disk per run and in all, from the authors' step times
    (cheap; `snakemake results/<experiment>/plan.md` before submitting the training jobs)."""
    output:
        f"{RESULTS}/plan.md",
    params:
        config=config,
    log:
        f"{LOGS}/plan.log",
    localrule: True
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/plan.py"
