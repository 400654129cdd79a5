"""MLflow tracking: where runs go, creating the store once, and logging helpers.

``python -m stages.tracking init --dataset NAME --out results/NAME/mlflow.json``

* The tracking URI is ``MLFLOW_TRACKING_URI`` if set, else ``mlflow.tracking_uri`` from
  ``params/pipeline.yaml``, else a sqlite store ``sqlite:///<repo>/results/mlflow.db`` with artifacts
  under ``results/mlartifacts/``. On a cluster, point the variable at an ``mlflow server`` (sqlite on
  a network filesystem is unsafe).
* ``init`` creates the database and the dataset's experiment (``<prefix>-<dataset>``) once, under a
  file lock, before the training jobs fan out: concurrent first use of a fresh sqlite store races
  (alembic migrations and experiment creation). Every training rule depends on its output.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stages.io.atomic import write_json
from stages.io.logs import setup_logging
from stages.paths import project_root

log = logging.getLogger("landfuse.tracking")


def resolve_tracking_uri(configured: str | None = None, root: Path | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{(root or project_root()) / 'results' / 'mlflow.db'}"


def local_artifact_root(root: Path | None = None) -> str:
    return ((root or project_root()) / "results" / "mlartifacts").as_uri()


def experiment_name(prefix: str, dataset: str) -> str:
    return f"{prefix}-{dataset}"


def init_experiment(uri: str, name: str, root: Path | None = None) -> str:
    """Create the store and experiment if needed (idempotent, serialised by a lock); returns its id."""
    import mlflow
    from filelock import FileLock

    root = root or project_root()
    lock_dir = root / "results"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / ".mlflow-init.lock"), timeout=600):
        client = mlflow.MlflowClient(tracking_uri=uri)
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        # a server chooses its own artifact store; a local sqlite store keeps them beside the db
        location = local_artifact_root(root) if uri.startswith("sqlite:") else None
        exp_id = client.create_experiment(name, artifact_location=location)
        log.info("created MLflow experiment %s (%s) in %s", name, exp_id, uri)
        return exp_id


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b": value}``; lists become strings (MLflow params are scalars)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[name] = ",".join(map(str, value))
        else:
            out[name] = value
    return out


def log_data_input(source: Path, name: str, digest: str, context: str) -> None:
    """Record a dataset (by path and our sha256 digest) as an MLflow input of the active run."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        # a local path matches two equivalent source types; MLflow warns and picks one
        warnings.simplefilter("ignore", UserWarning)
        src = resolve_dataset_source(str(source.resolve()))
    dataset = MetaDataset(source=src, name=name, digest=digest[:36])
    mlflow.log_input(dataset, context=context)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Create the MLflow store and a dataset's experiment.")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init")
    init.add_argument("--dataset", required=True)
    init.add_argument("--prefix", default="landfuse")
    init.add_argument("--tracking-uri", default=None, help="overrides params; MLFLOW_TRACKING_URI wins")
    init.add_argument("--out", required=True, type=Path, help="flag file the training rules depend on")
    args = parser.parse_args(argv)
    setup_logging()
    uri = resolve_tracking_uri(args.tracking_uri)
    name = experiment_name(args.prefix, args.dataset)
    exp_id = init_experiment(uri, name)
    # no URI or id in the flag file: they depend on the machine, the flag only orders the jobs
    write_json(args.out, {"experiment": name})
    log.info("experiment %s ready (id %s)", name, exp_id)


if __name__ == "__main__":
    main()
