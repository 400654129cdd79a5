# Helpers shared by the rules: dataset and experiment lookups from params/, and per-run paths.
import json
import shlex
from functools import cache

from stages.config import load_dataset, model_for, resolve_experiments

# conda is optional (see README); paths are relative to the rule files in workflow/rules/.
CONDA_ENV = "../../environment.yml"


wildcard_constraints:
    ds=r"[a-z0-9][a-z0-9_-]*",
    run=r"[a-z0-9][a-z0-9_+.-]*",
    seed=r"\d+",


@cache
def dataset(ds):
    return load_dataset(ds)


@cache
def experiments(ds):
    return {e.name: e for e in resolve_experiments(config, dataset(ds))}


def experiment(wildcards):
    return experiments(wildcards.ds)[wildcards.run]


def dataset_params(wildcards):
    """The dataset's params file and those it is merged over (its twin_of chain)."""
    return [f"params/datasets/{name}.yaml" for name in (wildcards.ds, *dataset(wildcards.ds).bases)]


def twin_source(wildcards):
    """Twins are generated locally and served to the download stage; real data has no such input."""
    return [f"data/twins/{wildcards.ds}"] if dataset(wildcards.ds).is_twin else []


def custom_sources(wildcards):
    """Local data (source.kind: custom): the user's files, so that editing one reruns the download."""
    return [str(p) for p in dataset(wildcards.ds).custom_sources.values()]


def uses_gan(wildcards):
    return bool(model_for(experiment(wildcards)).training.get("use_augmented", False))


def overrides_args(wildcards):
    """Hyper-parameter overrides of an experiment (e.g. an ablation switch) as shell-quoted JSON."""
    exp = experiment(wildcards)
    args = [f"--{key} {shlex.quote(json.dumps(value, sort_keys=True))}"
            for key, value in (("architecture", exp.architecture), ("training", exp.training)) if value]
    return " ".join(args)


def gan_store(wildcards):
    return [f"results/{wildcards.ds}/augmented.zarr"] if uses_gan(wildcards) else []


def run_dirs(ds):
    return [f"results/{ds}/runs/{run}/seed{seed}" for run in experiments(ds) for seed in config["seeds"]]


def mlflow_experiment(ds):
    return f"{config['mlflow']['experiment_prefix']}-{ds}"


def tracking_uri_arg():
    uri = config["mlflow"]["tracking_uri"]
    return f"--tracking-uri {uri}" if uri else ""


def augment_model(wildcards):
    """The GAN of the augment stage: patches for scene datasets, label-to-tile for tile datasets."""
    key = "tile_model" if dataset(wildcards.ds).task == "tiles" else "model"
    return config["augment"][key]
