"""Stage ``evaluate``: the full-scene map and the test scores of one trained run.

``python -m stages.evaluate --dataset NAME --store results/NAME/patches.zarr --run results/NAME/runs/E/seed0``

One streaming pass over the normalised scene chunks predicts every valid pixel (tile by tile, in
batches: memory is one padded tile per modality plus one batch, and the ``uint8`` map). The test
scores are then read off the map at the official test pixels, which is exactly the prediction for
each test pixel's patch. Test labels are used for nothing but scoring.

Outputs in the run folder: ``metrics.json`` (OA, AA, kappa, per-class accuracy and F1),
``confusion.csv`` and ``confusion.png``, ``map.tif`` (uint8 class ids, CRS, transform, colour table) and
``map.png``. Segmentation models predict scenes through overlapping windows
(:func:`stages.data.segmentation.predict_scene`) and are scored on the same test pixels. On tile
datasets every labelled test pixel counts and the map is a mosaic of the first test tiles. The run's
MLflow entry gets the same scores and files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from affine import Affine
from rasterio.crs import CRS

from stages.data.segmentation import MOSAIC_TILES, mosaic, predict_tiles
from stages.data.segmentation import predict_scene as predict_scene_windows
from stages.data.store import PatchStore, ids_to_index, scene_batches
from stages.io.atomic import write_json, write_text
from stages.io.logs import progress, setup_logging
from stages.io.raster import write_class_map
from stages.metrics import confusion_matrix, scores
from stages.plots import plot_confusion, save_map_png
from stages.runtime import pick_device, set_threads
from stages.train import load_checkpoint

log = logging.getLogger("landfuse.evaluate")


@torch.inference_mode()
def predict_scene(
    model: torch.nn.Module, store: PatchStore, binding: Any, device: torch.device, batch: int
) -> np.ndarray:
    """Class ids (1..K, 0 where the scene has no data) for every pixel, ``(H, W)`` uint8."""
    model.eval()
    valid = store.valid()
    class_ids = store.class_ids.astype(np.uint8)
    out = np.zeros(valid.shape, dtype=np.uint8)
    bar = progress(None, desc="map", total=int(valid.sum()), unit="px")
    for pts, primary, auxiliary in scene_batches(store, binding, batch):
        logits = model(torch.from_numpy(primary).to(device), torch.from_numpy(auxiliary).to(device))
        out[pts[:, 0], pts[:, 1]] = class_ids[logits.argmax(1).cpu().numpy()]
        bar.update(len(pts))
    bar.close()
    return out


def score_tiles(
    model: torch.nn.Module, store: PatchStore, binding: Any, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix over every labelled pixel of the test tiles, and a mosaic of the first tiles."""
    n = store.n_classes
    cm = np.zeros((n, n), np.int64)
    shown = []
    for i, pred, truth in predict_tiles(model, store, "test", binding, device):
        keep = np.isin(truth, store.class_ids)
        cm += confusion_matrix(
            ids_to_index(truth[keep], store.class_ids), ids_to_index(pred[keep], store.class_ids), n
        )
        if i < MOSAIC_TILES:
            shown.append(pred)
    return cm, mosaic(shown)


def confusion_csv(cm: np.ndarray, names: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true \\ predicted", *names])
    for name, row in zip(names, cm.tolist(), strict=True):
        writer.writerow([name, *row])
    return buf.getvalue()


def evaluate(
    dataset: str, store_path: Path, run_dir: Path, threads: int = 2, device: str = "auto", batch: int = 1024
) -> dict[str, Any]:
    set_threads(threads)
    dev = pick_device(device)
    store = PatchStore(store_path)
    model, binding, ckpt = load_checkpoint(run_dir / "model.pt", dev)
    names = [c["name"] for c in store.classes]
    palette = [tuple(c["color"]) for c in store.classes]

    if store.attrs.get("task", "scene") == "tiles":
        cm, class_map = score_tiles(model, store, binding, dev)
        transform, crs = None, None  # a mosaic of separate tiles has no single georeference
    else:
        if model.task == "segmentation":
            bar = progress(None, desc="map", unit="window")
            class_map = predict_scene_windows(model, store, binding, dev, ckpt["patch_size"], progress=bar)
            bar.close()
        else:
            class_map = predict_scene(model, store, binding, dev, batch)
        yx = store.yx("test")
        y_pred = ids_to_index(class_map[yx[:, 0], yx[:, 1]], store.class_ids)
        cm = confusion_matrix(store.targets("test"), y_pred, store.n_classes)
        grid = store.attrs["grid"]
        transform = Affine(*grid["transform"])
        crs = CRS.from_user_input(grid["crs"]) if grid.get("crs") else None
    result = scores(cm)
    train_info = json.loads((run_dir / "train.json").read_text())
    metrics = {
        "dataset": dataset,
        "experiment": train_info["experiment"],
        "model": train_info["model"],
        "seed": train_info["seed"],
        "modalities": train_info["modalities"],
        "classes": names,
        "test": result,
        "val": train_info["best"],
    }
    write_json(run_dir / "metrics.json", metrics)
    write_text(run_dir / "confusion.csv", confusion_csv(cm, names))
    run_name = f"{train_info['experiment']} seed {train_info['seed']}"
    title = f"{run_name}: OA {result['oa']:.3f}, kappa {result['kappa']:.3f}"
    plot_confusion(run_dir / "confusion.png", cm, names, title)
    write_class_map(run_dir / "map.tif", class_map, transform, crs, palette, names)
    save_map_png(run_dir / "map.png", class_map, palette)
    log.info("%s: test OA %.4f AA %.4f kappa %.4f", run_dir, result["oa"], result["aa"], result["kappa"])
    _log_to_mlflow(run_dir, result, store, cm)
    return metrics


def _log_to_mlflow(run_dir: Path, result: dict[str, Any], store: PatchStore, cm: np.ndarray) -> None:
    pointer = json.loads((run_dir / "mlflow_run.json").read_text())
    if not pointer.get("run_id"):
        return
    import mlflow

    # resume the run in the store where the train stage created it
    mlflow.set_tracking_uri(pointer["tracking_uri"])
    with mlflow.start_run(run_id=pointer["run_id"]):
        test = {
            "test_oa": result["oa"],
            "test_aa": result["aa"],
            "test_kappa": result["kappa"],
            "test_miou": result["miou"],
            "test_f1_macro": float(np.nanmean(result["per_class_f1"])),
        }
        for c, acc, f1 in zip(
            store.classes, result["per_class_accuracy"], result["per_class_f1"], strict=True
        ):
            if not np.isnan(acc):
                test[f"test_acc_{c['key']}"] = acc
            if not np.isnan(f1):
                test[f"test_f1_{c['key']}"] = f1
        mlflow.log_metrics(test)
        mlflow.log_dict(
            {"classes": [c["name"] for c in store.classes], "matrix": cm.tolist()},
            "evaluation/confusion.json",
        )
        for name in ("metrics.json", "confusion.csv", "confusion.png", "map.png", "map.tif"):
            mlflow.log_artifact(str(run_dir / name), artifact_path="evaluation")
        mlflow.set_tag("landfuse.stage", "evaluated")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--store", required=True, type=Path)
    parser.add_argument("--run", required=True, type=Path, help="the run folder written by the train stage")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args(argv)
    setup_logging()
    evaluate(args.dataset, args.store, args.run, args.threads, args.device, args.batch)


if __name__ == "__main__":
    main()
