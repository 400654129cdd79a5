# Models: one MLflow experiment per dataset (created before the fan-out), then train and evaluate
# per (experiment, seed).


rule mlflow_init:
    output:
        "results/{ds}/mlflow.json",
    params:
        prefix=config["mlflow"]["experiment_prefix"],
        uri=tracking_uri_arg(),
    log:
        "results/{ds}/logs/mlflow_init.log",
    benchmark:
        "results/{ds}/benchmarks/mlflow_init.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m stages.tracking init --dataset {wildcards.ds} --prefix {params.prefix} {params.uri}"
        " --out {output} > {log} 2>&1"


rule train:
    input:
        store="results/{ds}/patches.zarr",
        summary="results/{ds}/patches.json",
        mlflow="results/{ds}/mlflow.json",
        model_params=lambda w: f"params/models/{experiment(w).model}.yaml",
        gan=gan_store,
    output:
        model="results/{ds}/runs/{run}/seed{seed}/model.pt",
        summary="results/{ds}/runs/{run}/seed{seed}/train.json",
        pointer="results/{ds}/runs/{run}/seed{seed}/mlflow_run.json",
    params:
        model=lambda w: experiment(w).model,
        preset=lambda w: experiment(w).preset,
        modalities=lambda w: ",".join(experiment(w).modalities),
        augmented=lambda w: "true" if uses_gan(w) else "false",
        overrides=overrides_args,
        gan=lambda w, input: f"--augmented-store {input.gan}" if input.gan else "",
        mlflow=lambda w: mlflow_experiment(w.ds),
        uri=tracking_uri_arg(),
    threads: config["threads"]["train"]
    log:
        "results/{ds}/logs/train/{run}-seed{seed}.log",
    benchmark:
        "results/{ds}/benchmarks/train/{run}-seed{seed}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m stages.train --dataset {wildcards.ds} --experiment {wildcards.run} --model {params.model}"
        " --preset {params.preset} --modalities {params.modalities} --augmented {params.augmented}"
        " {params.overrides}"
        " --seed {wildcards.seed} --store {input.store} --data-summary {input.summary} {params.gan}"
        " --out results/{wildcards.ds}/runs/{wildcards.run}/seed{wildcards.seed} --threads {threads}"
        " --mlflow-experiment {params.mlflow} {params.uri} > {log} 2>&1"


rule evaluate:
    input:
        store="results/{ds}/patches.zarr",
        model="results/{ds}/runs/{run}/seed{seed}/model.pt",
        summary="results/{ds}/runs/{run}/seed{seed}/train.json",
        pointer="results/{ds}/runs/{run}/seed{seed}/mlflow_run.json",
    output:
        metrics="results/{ds}/runs/{run}/seed{seed}/metrics.json",
        confusion="results/{ds}/runs/{run}/seed{seed}/confusion.csv",
        confusion_png="results/{ds}/runs/{run}/seed{seed}/confusion.png",
        map="results/{ds}/runs/{run}/seed{seed}/map.tif",
        map_png="results/{ds}/runs/{run}/seed{seed}/map.png",
    threads: config["threads"]["evaluate"]
    log:
        "results/{ds}/logs/evaluate/{run}-seed{seed}.log",
    benchmark:
        "results/{ds}/benchmarks/evaluate/{run}-seed{seed}.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m stages.evaluate --dataset {wildcards.ds} --store {input.store}"
        " --run results/{wildcards.ds}/runs/{wildcards.run}/seed{wildcards.seed} --threads {threads} > {log} 2>&1"


rule index_runs:
    input:
        metrics=lambda w: [f"{d}/metrics.json" for d in run_dirs(w.ds)],
    output:
        "results/{ds}/runs/index.json",
    log:
        "results/{ds}/logs/index_runs.log",
    benchmark:
        "results/{ds}/benchmarks/index_runs.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m stages.report index --out {output} {input.metrics} > {log} 2>&1"
