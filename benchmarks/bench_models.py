"""Throughput of every patch classifier and preset on this machine, on random data.

Geometry (band counts, classes, patch size, scene size, training-set size) comes from a dataset's params
file, so the numbers answer "how long will an epoch / a full-scene prediction take here":

* train: optimiser steps at the preset's batch size and optimiser, ``--train-threads`` threads (the
  ``train`` rule runs on 1), reported as patches/s and seconds per epoch over the training pixels left
  after the validation split;
* inference: ``eval()`` + ``torch.inference_mode`` at ``--infer-threads`` threads (the ``evaluate`` rule
  runs on 2) and each ``--infer-batch``, reported as patches/s and seconds for every pixel of the scene.

Usage::

    python benchmarks/bench_models.py                        # every model, quick preset
    python benchmarks/bench_models.py --models fusatnet --presets quick paper --infer-batch 256 1024

Allocator note: PyTorch's CPU tensors come straight from malloc. With glibc's defaults, big activations
(> 32 MB, e.g. FusAtNet quick at batch 1024) are mmap'ed and unmapped on every forward, and freed heap tops
are trimmed; on this VM, where touching fresh pages is expensive, that made inference 2-10x slower and very
erratic. ``--glibc-tune`` (the default) raises the mmap and trim thresholds first (``mallopt``), which the
same process can do in any stage; ``--no-glibc-tune`` measures the defaults.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from stages.config import load_dataset, load_model, load_pipeline
from stages.models import MODELS, build_model
from stages.models.base import PatchClassifier
from stages.runtime import tune_malloc
from stages.train import make_optimizer


def batch(n: int, in_channels: tuple[int, int], p: int, n_classes: int) -> tuple[torch.Tensor, ...]:
    return (
        torch.randn(n, in_channels[0], p, p),
        torch.randn(n, in_channels[1], p, p),
        torch.randint(0, n_classes, (n,)),
    )


def bench_train(model: PatchClassifier, training: dict[str, Any], geom: dict[str, Any], steps: int) -> float:
    """Training patches per second (forward, backward, optimiser step)."""
    bs = training["batch_size"]
    xp, xa, y = batch(bs, geom["in_channels"], geom["patch_size"], geom["n_classes"])
    opt = make_optimizer(model.parameters(), training["optimizer"])
    model.train()
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            start = time.perf_counter()
        loss, _ = model.training_loss(xp, xa, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * bs / (time.perf_counter() - start)


def bench_infer(model: PatchClassifier, geom: dict[str, Any], bs: int, batches: int) -> float:
    """Inference patches per second."""
    xp, xa, _ = batch(bs, geom["in_channels"], geom["patch_size"], geom["n_classes"])
    model.eval()
    with torch.inference_mode():
        model(xp, xa)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            model(xp, xa)
    return batches * bs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", default="houston2013", help="params/datasets/<name>.yaml for the geometry"
    )
    parser.add_argument("--models", nargs="+", default=sorted(MODELS))
    parser.add_argument("--presets", nargs="+", default=["quick"], choices=["quick", "paper"])
    parser.add_argument("--train-threads", type=int, default=1)
    parser.add_argument("--infer-threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--infer-batch", type=int, nargs="+", default=[1024])
    parser.add_argument(
        "--infer-patches", type=int, default=16384, help="patches timed per inference batch size"
    )
    parser.add_argument("--glibc-tune", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    tuned = tune_malloc() if args.glibc_tune else False

    ds = load_dataset(args.dataset)
    mods = ds.modalities
    in_channels = (
        sum(mods[m].bands for m in ds.modalities_with_role("primary")),
        sum(mods[m].bands for m in ds.modalities_with_role("auxiliary")),
    )
    geom = {"in_channels": in_channels, "n_classes": ds.n_classes, "patch_size": ds.patch_size}
    counts = ds.expected_counts("train")
    val_fraction = load_pipeline()["split"]["val_fraction"]
    n_train = round(sum(counts.values()) * (1 - val_fraction)) if counts else 2048
    n_scene = ds.height * ds.width
    print(
        f"{ds.name}: in_channels={in_channels} classes={ds.n_classes} P={ds.patch_size} "
        f"train patches={n_train} scene pixels={n_scene}; torch {torch.__version__}; "
        f"glibc malloc tuned: {tuned}"
    )

    for name in args.models:
        for preset in args.presets:
            spec = load_model(name, preset)
            torch.manual_seed(0)
            model = build_model(name, architecture=spec.architecture, **geom)
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            torch.set_num_threads(args.train_threads)
            steps = args.train_steps if preset == "quick" else max(2, args.train_steps // 6)
            train_ps = bench_train(model, spec.training, geom, steps)
            line = (
                f"{name:>16} {preset:>5}  params {n_params:>11,}  train {train_ps:8.0f} patch/s "
                f"({args.train_threads} thr) = {n_train / train_ps:7.1f} s/epoch"
            )
            torch.set_num_threads(args.infer_threads)
            for bs in args.infer_batch:
                batches = max(2, args.infer_patches // bs) if preset == "quick" else 2
                infer_ps = bench_infer(model, geom, bs, batches)
                line += f" | infer bs {bs}: {infer_ps:7.0f} patch/s = {n_scene / infer_ps:7.1f} s/scene"
            print(line + f" ({args.infer_threads} thr)", flush=True)


if __name__ == "__main__":
    main()
