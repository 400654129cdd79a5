# The per-dataset report: comparison table over seeds, figures and a sha256 manifest of every artifact.


rule report:
    input:
        index="results/{ds}/runs/index.json",
        metrics=lambda w: [f"{d}/metrics.json" for d in run_dirs(w.ds)],
        maps=lambda w: [f"{d}/map.tif" for d in run_dirs(w.ds)],
        confusion=lambda w: [f"{d}/confusion.csv" for d in run_dirs(w.ds)],
        quality="results/{ds}/augment/quality.json",
        patches="results/{ds}/patches.json",
        store="results/{ds}/patches.zarr",
        coreg="results/{ds}/coreg",
    output:
        report=directory("results/{ds}/all"),
        metrics="results/{ds}/metrics.json",
        curves=directory("results/{ds}/curves"),
    log:
        "results/{ds}/logs/report.log",
    benchmark:
        "results/{ds}/benchmarks/report.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m stages.report build --dataset {wildcards.ds} --results results/{wildcards.ds}"
        " --index {input.index} --out {output.report} > {log} 2>&1"
