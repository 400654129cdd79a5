# Data: twin generation (synthetic datasets only), download, co-registration and the patch store.


rule twin:
    input:
        dataset_params,
    output:
        directory("data/twins/{ds}"),
    log:
        "results/{ds}/logs/twin.log",
    benchmark:
        "results/{ds}/benchmarks/twin.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m stages.twin --dataset {wildcards.ds} --out {output} > {log} 2>&1"


rule download:
    input:
        params=dataset_params,
        twin=twin_source,
        custom=custom_sources,
    output:
        directory("data/raw/{ds}"),
    params:
        twin=lambda w, input: f"--twin-dir {input.twin}" if input.twin else "",
    log:
        "results/{ds}/logs/download.log",
    benchmark:
        "results/{ds}/benchmarks/download.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m stages.download --dataset {wildcards.ds} --out {output} {params.twin} > {log} 2>&1"


rule coregister:
    input:
        raw="data/raw/{ds}",
        params=dataset_params,
    output:
        directory("results/{ds}/coreg"),
    threads: config["threads"]["coregister"]
    log:
        "results/{ds}/logs/coregister.log",
    benchmark:
        "results/{ds}/benchmarks/coregister.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m stages.coregister --dataset {wildcards.ds} --raw {input.raw} --out {output}"
        " --threads {threads} > {log} 2>&1"


rule patches:
    input:
        coreg="results/{ds}/coreg",
        raw="data/raw/{ds}",
        params=dataset_params,
    output:
        store=directory("results/{ds}/patches.zarr"),
        summary="results/{ds}/patches.json",
    params:
        val_fraction=config["split"]["val_fraction"],
        split_seed=config["split"]["seed"],
        chunk=config["patches"]["chunk_samples"],
        shard=config["patches"]["shard_samples"],
        scene_chunk=config["patches"]["scene_chunk"],
        scene_shard=config["patches"]["scene_shard"],
        tile_chunk=config["patches"]["tile_chunk"],
        tile_shard=config["patches"]["tile_shard"],
        scheduler=(
            f"--scheduler {config['patches']['dask_scheduler']}" if config["patches"]["dask_scheduler"] else ""
        ),
    threads: config["threads"]["patches"]
    log:
        "results/{ds}/logs/patches.log",
    benchmark:
        "results/{ds}/benchmarks/patches.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m stages.patches --dataset {wildcards.ds} --coreg {input.coreg} --out {output.store}"
        " --summary {output.summary} --val-fraction {params.val_fraction} --split-seed {params.split_seed}"
        " --chunk-samples {params.chunk} --shard-samples {params.shard} --scene-chunk {params.scene_chunk}"
        " --scene-shard {params.scene_shard} --raw {input.raw} --tile-chunk {params.tile_chunk}"
        " --tile-shard {params.tile_shard} --threads {threads} {params.scheduler} > {log} 2>&1"
