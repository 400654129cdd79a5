# GAN augmentation: trained on the training patches only; writes synthetic patches and a quality report.


rule augment:
    input:
        store="results/{ds}/patches.zarr",
        params=lambda w: f"params/models/{augment_model(w)}.yaml",
    output:
        store=directory("results/{ds}/augmented.zarr"),
        quality="results/{ds}/augment/quality.json",
        figure="results/{ds}/augment/spectra.png",
    params:
        samples=config["augment"]["samples_per_class"],
        preset=config["preset"],
        seed=config["augment"]["seed"],
        tiles=config["augment"]["synthetic_tiles"],
    threads: config["threads"]["augment"]
    log:
        "results/{ds}/logs/augment.log",
    benchmark:
        "results/{ds}/benchmarks/augment.tsv"
    conda:
        CONDA_ENV
    shell:
        "python -m stages.augment --dataset {wildcards.ds} --store {input.store} --out {output.store}"
        " --quality {output.quality} --samples-per-class {params.samples} --preset {params.preset}"
        " --seed {params.seed} --synthetic-tiles {params.tiles} --threads {threads} > {log} 2>&1"
