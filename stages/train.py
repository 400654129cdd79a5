"""Stage ``train``: one job per (dataset, experiment, seed).

``python -m stages.train --dataset NAME --experiment fusatnet --seed 0 --store results/NAME/patches.zarr
--out results/NAME/runs/fusatnet/seed0``

Trains the experiment's model on the training patches (plus the GAN patches when the experiment or
the model's params ask for them), on CUDA when present, else on the CPU with the rule's threads.
After every epoch the model is scored on the validation split (carved from the official training
pixels); the checkpoint with the best validation OA is kept. The test split is not opened here.

Outputs: ``model.pt`` (the selected weights plus everything needed to rebuild the network),
``train.json`` (validation scores, per-epoch curves, provenance) and ``mlflow_run.json`` (the MLflow
run, which the evaluate stage resumes to add test scores and maps).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.config import Experiment, ModelSpec, model_for
from stages.data.segmentation import SceneWindows, TileCrops
from stages.data.store import ModalityBinding, PatchStore, TrainingBatches
from stages.io.atomic import atomic_path, write_json
from stages.io.logs import progress, setup_logging
from stages.metrics import confusion_matrix, scores
from stages.models import IGNORE_INDEX, MODELS, build_model
from stages.models.base import PatchClassifier
from stages.runtime import environment_info, pick_device, seed_everything, set_threads

log = logging.getLogger("landfuse.train")


def make_optimizer(params: Any, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    name, lr, wd = cfg["name"], cfg["lr"], cfg.get("weight_decay", 0.0)
    betas = tuple(cfg.get("betas", (0.9, 0.999)))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=wd)
    if name == "nadam":
        return torch.optim.NAdam(params, lr=lr, betas=betas, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.get("momentum", 0.9), weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}")


def make_schedule(optimizer: torch.optim.Optimizer, cfg: dict[str, Any], epochs: int):
    """A per-epoch learning-rate multiplier: constant, cosine, poly or exponential after an epoch."""
    name = cfg.get("name", "constant")
    if name == "constant":
        factor = lambda e: 1.0  # noqa: E731
    elif name == "cosine":
        factor = lambda e: 0.5 * (1 + np.cos(np.pi * e / epochs))  # noqa: E731
    elif name == "poly":
        power = cfg.get("power", 0.9)
        factor = lambda e: (1 - e / epochs) ** power  # noqa: E731
    elif name == "exp_after":
        start, gamma = cfg.get("start_epoch", 0), cfg.get("gamma", 1.0)
        factor = lambda e: 1.0 if e < start else float(np.exp(-gamma * (e - start)))  # noqa: E731
    else:
        raise ValueError(f"unknown schedule {name!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def random_dihedral(
    primary: torch.Tensor, auxiliary: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one of the 8 rotations/flips per sample, the same to both inputs (upstream: rot90 x4)."""
    codes = torch.randint(0, 8, (primary.shape[0],), generator=gen)
    out_p, out_a = primary.clone(), auxiliary.clone()
    for code in range(1, 8):
        sel = codes == code
        if not sel.any():
            continue
        k, flip = code % 4, code >= 4
        for src, dst in ((primary, out_p), (auxiliary, out_a)):
            x = src[sel]
            if flip:
                x = x.flip(-1)
            dst[sel] = torch.rot90(x, k, dims=(-2, -1))
    return out_p, out_a


@torch.inference_mode()
def predict(model: PatchClassifier, batches: Any, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, predictions)`` over ``batches`` of ``(primary, auxiliary, targets)``; dense targets
    (segmentation) are flattened to their labelled pixels."""
    model.eval()
    ys, ps = [], []
    for primary, auxiliary, target in batches:
        logits = model(torch.from_numpy(primary).to(device), torch.from_numpy(auxiliary).to(device))
        pred = logits.argmax(1).cpu().numpy()
        keep = target != IGNORE_INDEX  # segmentation: only the labelled pixels count
        ps.append(pred[keep])
        ys.append(target[keep])
    return np.concatenate(ys), np.concatenate(ps)


def checkpoint_payload(
    model: PatchClassifier, spec: ModelSpec, binding: ModalityBinding, state: dict[str, Any]
) -> dict[str, Any]:
    return {
        "model": spec.name,
        "preset": spec.preset,
        "architecture": spec.architecture,
        "in_channels": list(model.in_channels),
        "n_classes": model.n_classes,
        "patch_size": model.tile_size if model.task == "segmentation" else model.patch_size,
        "binding": {"primary": list(binding.primary), "auxiliary": list(binding.auxiliary)},
        "state_dict": state,
    }


def load_checkpoint(
    path: Path, device: torch.device
) -> tuple[PatchClassifier, ModalityBinding, dict[str, Any]]:
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = build_model(
        ckpt["model"],
        in_channels=tuple(ckpt["in_channels"]),
        n_classes=ckpt["n_classes"],
        patch_size=ckpt["patch_size"],
        architecture=ckpt["architecture"],
    ).to(device)
    model.load_state_dict(ckpt["state_dict"])
    binding = ModalityBinding(tuple(ckpt["binding"]["primary"]), tuple(ckpt["binding"]["auxiliary"]))
    return model, binding, ckpt


@dataclass
class TrainingData:
    """What one training run iterates: shuffled training batches and fixed validation batches."""

    train_epoch: Callable[[np.random.Generator], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]]
    val_batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]]
    n_train: int  # labelled training samples (patches) or pixels (segmentation)
    n_val: int
    geometry: int  # patch size (patch classifiers) or training tile size (segmenters)


def training_data(
    store: PatchStore,
    task: str,
    binding: ModalityBinding,
    cfg: dict[str, Any],
    extra: list[tuple[PatchStore, str]],
) -> TrainingData:
    """Batches for a patch classifier or a segmenter, on a scene store or a tile store."""
    store_task = store.attrs.get("task", "scene")
    if task == "patch":
        if store_task == "tiles":
            raise ValueError(
                f"{store.path}: patch classifiers need a scene dataset (a label per patch centre); "
                "use a segmentation model on tile datasets."
            )
        train = TrainingBatches([(store, "train"), *extra], binding, store.class_ids, cfg["batch_size"])
        val = TrainingBatches([(store, "val")], binding, store.class_ids, 512)
        drop = len(train) > cfg["batch_size"]
        return TrainingData(
            lambda rng: train.epoch(rng, drop_last=drop),
            lambda: val.epoch(None),
            len(train),
            len(val),
            store.patch_size,
        )
    tile = cfg.get("tile_size")
    if tile is None:
        raise ValueError("segmentation presets need `training.tile_size` in params/models/<model>.yaml")
    augment = bool(cfg.get("augment_rot90"))
    if store_task == "tiles":
        train = TileCrops(
            [(store, "train"), *extra], binding, store.class_ids, tile, cfg["batch_size"], augment
        )
        size = int(store.attrs["tile_size"])
        val = TileCrops([(store, "val")], binding, store.class_ids, size, 2)
        n_train = sum(int((labels >= 0).sum()) for labels in train.labels)
        n_val = sum(int((labels >= 0).sum()) for labels in val.labels)
        return TrainingData(train.epoch, lambda: val.epoch(np.random.default_rng(0)), n_train, n_val, tile)
    if extra:
        raise ValueError(
            "GAN patches of a scene dataset cannot train a segmentation model; set use_augmented: false"
        )
    train = SceneWindows(store, "train", binding, tile, cfg["batch_size"], augment)
    val = SceneWindows(store, "val", binding, tile, 8)
    return TrainingData(train.epoch, lambda: val.epoch(np.random.default_rng(0)), len(train), len(val), tile)


def train(
    *,
    dataset: str,
    experiment: Experiment,
    seed: int,
    store_path: Path,
    out: Path,
    augmented_path: Path | None = None,
    data_summary: Path | None = None,
    threads: int = 1,
    device: str = "auto",
    tracking: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, select on validation, write the outputs; returns the contents of ``train.json``."""
    set_threads(threads)
    seed_everything(seed)
    dev = pick_device(device)
    spec = model_for(experiment)
    cfg = spec.training
    store = PatchStore(store_path)
    task = MODELS[spec.name].task
    binding = ModalityBinding.build(
        store.modalities, experiment.modalities, fill_missing=MODELS[spec.name].fills_missing_role
    )
    use_gan = bool(cfg.get("use_augmented", False))
    if use_gan and augmented_path is None:
        raise ValueError(
            f"experiment {experiment.name} asks for GAN patches but no --augmented store was given"
        )
    extra = [(PatchStore(augmented_path), "train")] if use_gan else []
    data = training_data(store, task, binding, cfg, extra)
    model = build_model(
        spec.name,
        in_channels=binding.channels(store.modalities),
        n_classes=store.n_classes,
        patch_size=data.geometry,
        architecture=spec.architecture,
    ).to(dev)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = make_optimizer(model.parameters(), cfg["optimizer"])
    epochs = cfg["epochs"]
    schedule = make_schedule(optimizer, cfg.get("schedule", {}), epochs)
    rng = np.random.default_rng([seed, 1])
    gen = torch.Generator().manual_seed(seed)
    patience = cfg.get("patience")
    select_on = cfg.get("select_on", "oa")

    data_digest = json.loads(data_summary.read_text())["sha256"] if data_summary else None
    run = _start_run(
        tracking, dataset, experiment, seed, spec, n_params, data.n_train, data_digest, store_path
    )

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {select_on: -1.0}
    best_state = None
    started = time.perf_counter()
    for epoch in progress(range(1, epochs + 1), desc=f"train {experiment.name} seed {seed}", unit="epoch"):
        model.train()
        total, parts_sum, n = 0.0, {}, 0
        for primary, auxiliary, target in data.train_epoch(rng):
            p, a = torch.from_numpy(primary), torch.from_numpy(auxiliary)
            if task == "patch" and cfg.get("augment_rot90"):
                p, a = random_dihedral(p, a, gen)  # segmentation loaders augment inputs and labels together
            loss, parts = model.training_loss(p.to(dev), a.to(dev), torch.from_numpy(target).to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(target)
            n += len(target)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * len(target)
        schedule.step()
        y_val, p_val = predict(model, data.val_batches(), dev)
        val = scores(confusion_matrix(y_val, p_val, store.n_classes))
        row = {
            "epoch": epoch,
            "train_loss": total / n,
            "val_oa": val["oa"],
            "val_aa": val["aa"],
            "val_miou": val["miou"],
            "val_kappa": val["kappa"],
            "lr": optimizer.param_groups[0]["lr"],
        }
        row.update({f"train_{k}": v / n for k, v in parts_sum.items()})
        history.append(row)
        if run is not None:
            _log_epoch(row)
        if val[select_on] > best[select_on]:
            best = {"epoch": epoch, **{k: val[k] for k in ("oa", "aa", "miou", "kappa")}}
            best_state = copy.deepcopy(model.state_dict())
        elif patience and epoch - best["epoch"] >= patience:
            log.info(
                "early stop at epoch %d: val %s has not improved for %d epochs", epoch, select_on, patience
            )
            break
    seconds = time.perf_counter() - started
    log.info(
        "%s seed %d: best val OA %.4f at epoch %d (%.1f s)",
        experiment.name,
        seed,
        best["oa"],
        best["epoch"],
        seconds,
    )

    model.load_state_dict(best_state)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.pt") as tmp:
        torch.save(checkpoint_payload(model, spec, binding, best_state), tmp)
    result = {
        "dataset": dataset,
        "experiment": experiment.name,
        "model": spec.name,
        "preset": spec.preset,
        "seed": seed,
        "modalities": list(experiment.modalities),
        "binding": {"primary": list(binding.primary), "auxiliary": list(binding.auxiliary)},
        "augmented": bool(use_gan),
        "n_parameters": n_params,
        "n_train": data.n_train,
        "n_val": data.n_val,
        "selection": f"best validation {select_on} (validation carved from the official training data)",
        "best": best,
        "epochs_run": len(history),
        "history": history,
        "data_sha256": data_digest,
        "hyperparameters": {"architecture": spec.architecture, "training": cfg},
        "device": dev.type,
        "threads": threads,
        "environment": environment_info(),
    }
    write_json(out / "train.json", result)
    if run is not None:
        _finish_run(run, model, best, seconds, out)
    write_json(
        out / "mlflow_run.json",
        {"run_id": run.info.run_id if run else None, "tracking_uri": tracking["uri"] if tracking else None},
    )
    return result


def _start_run(
    tracking: dict[str, Any] | None,
    dataset: str,
    experiment: Experiment,
    seed: int,
    spec: ModelSpec,
    n_params: int,
    n_train: int,
    data_digest: str | None,
    store_path: Path,
):
    if tracking is None:
        return None
    import mlflow

    from stages.runtime import git_commit
    from stages.tracking import flatten, log_data_input

    mlflow.set_tracking_uri(tracking["uri"])
    mlflow.set_experiment(tracking["experiment"])
    run = mlflow.start_run(run_name=f"{experiment.name}-seed{seed}")
    mlflow.set_tags(
        {
            "dataset": dataset,
            "experiment": experiment.name,
            "model": spec.name,
            "preset": spec.preset,
            "seed": str(seed),
            "modalities": "+".join(experiment.modalities),
            "git_commit": git_commit() or "unknown",
            "data_sha256": data_digest or "unknown",
            "landfuse.stage": "train",
        }
    )
    mlflow.log_params(
        flatten(
            {
                "dataset": dataset,
                "experiment": experiment.name,
                "seed": seed,
                "modalities": list(experiment.modalities),
                "n_parameters": n_params,
                "n_train": n_train,
                "architecture": spec.architecture,
                "training": spec.training,
            }
        )
    )
    if data_digest:
        log_data_input(store_path, f"{dataset}-patches", data_digest, context="training")
    return run


def _log_epoch(row: dict[str, float]) -> None:
    import mlflow

    epoch = int(row["epoch"])
    mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=epoch)


def _finish_run(run: Any, model: PatchClassifier, best: dict[str, Any], seconds: float, out: Path) -> None:
    import mlflow

    mlflow.log_metrics(
        {
            "best_val_oa": best["oa"],
            "best_val_aa": best["aa"],
            "best_val_kappa": best["kappa"],
            "best_epoch": best["epoch"],
            "train_seconds": seconds,
        }
    )
    mlflow.log_artifact(str(out / "model.pt"), artifact_path="checkpoint")
    mlflow.pytorch.log_model(model.cpu(), name="model", serialization_format="pickle")
    mlflow.end_run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--experiment", required=True, help="the run name, e.g. fusatnet-hsi")
    parser.add_argument("--model", required=True, help="a params/models/<name>.yaml")
    parser.add_argument("--preset", required=True, choices=("quick", "paper"))
    parser.add_argument("--modalities", required=True, help="comma-separated modality names")
    parser.add_argument(
        "--augmented",
        choices=("auto", "true", "false"),
        default="auto",
        help="add the GAN patches (auto: as the model preset says)",
    )
    parser.add_argument("--architecture", type=json.loads, default={}, help="JSON overrides of the preset")
    parser.add_argument("--training", type=json.loads, default={}, help="JSON overrides of the preset")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--store", required=True, type=Path)
    parser.add_argument("--data-summary", type=Path, default=None, help="patches.json (its sha256 is logged)")
    parser.add_argument("--augmented-store", type=Path, default=None)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tracking-uri", default=None, help="MLFLOW_TRACKING_URI wins when set")
    parser.add_argument("--mlflow-experiment", default=None, help="omit to skip MLflow logging")
    args = parser.parse_args(argv)
    setup_logging()
    experiment = Experiment(
        name=args.experiment,
        model=args.model,
        modalities=tuple(args.modalities.split(",")),
        preset=args.preset,
        augmented=None if args.augmented == "auto" else args.augmented == "true",
        architecture=args.architecture,
        training=args.training,
    )
    tracking = None
    if args.mlflow_experiment:
        from stages.tracking import resolve_tracking_uri

        tracking = {"uri": resolve_tracking_uri(args.tracking_uri), "experiment": args.mlflow_experiment}
    train(
        dataset=args.dataset,
        experiment=experiment,
        seed=args.seed,
        store_path=args.store,
        out=args.out,
        augmented_path=args.augmented_store,
        data_summary=args.data_summary,
        threads=args.threads,
        device=args.device,
        tracking=tracking,
    )


if __name__ == "__main__":
    main()
