"""The patch stage against the upstream "naive" patch builder: speed, peak memory and size on disk.

Two synthetic scenes, each written once as a co-registration folder (what ``stages.coregister`` leaves in
``results/<dataset>/coreg``: ``<modality>.tif``, ``labels_train.tif``, ``labels_test.tif``, ``valid.tif``
and ``grid.json``):

* ``houston``: the full-size Houston 2013 twin geometry, read from ``params/datasets/houston2013-twin.yaml``
  (349 x 1905, HSI 144 + LiDAR 1 bands, 2832 train + 12197 test labelled pixels, 11 x 11 patches);
* ``berlin``: a *synthetic benchmark scene* with the size of HS-SAR Berlin (1723 x 476, 244 + 4 bands,
  2820 train + 461851 test pixels over 8 classes, 11 x 11 patches). The geometry and per-class counts are
  defined here, after ../shared/reference/datasets.md §2 (counts tagged unconfirmed there); they are not
  dataset facts and there is no Berlin params file.

Pixel values are a smooth linear-mixing model (6 random smooth spectra, smooth random abundances) plus 1 %
noise, float32, written in 256-row strips. Labelled pixels sit at uniformly random positions with exactly
the per-class counts (the worst case for tile-wise reading: every scene tile holds test pixels).
``valid.tif`` is all ones.

Variants, each run in a fresh child process (this script re-invoked with ``--worker``), which reports its
own timings (``time.perf_counter``) and peak RSS (``VmHWM`` of its own address space, so variants do not
pollute each other; the child's interpreter and imports are included; see ``_maxrss`` for why not
``ru_maxrss``) as JSON on stdout:

* ``ours``: ``stages.patches.build_patch_store`` with the ``patches`` rule's settings from
  ``params/pipeline.yaml`` (split, chunk/shard sizes, 2 threads, dask's threaded scheduler), then every
  test patch served once through ``stages.data.store.scene_batches`` with all modalities (batch 1024, as
  ``evaluate``). patches/s = (train + val + test patches made available) / (build + serve seconds); the
  store size is the summary's byte count.
* ``naive``: FusAtNet's ``data_prepare.py`` pattern: load each modality whole as ``(H, W, C)`` float32,
  per-band min-max over the full image, zero-pad by ``P // 2``, find the labelled pixels of each split
  with the pure-Python triple loop ``for k in classes: for i in range(H): for j in range(W): if
  y[i, j] == k: index = np.append(index, [[k, i, j]], 0)`` (the quadratic ``np.append`` is kept: it costs
  well under a second for Houston), copy every ``P x P x C`` patch into one preallocated float32 array per
  split and modality (all kept in memory), then ``np.save`` them. patches/s = (train + test patches) /
  total seconds, size = the ``.npy`` files. Where its computed memory need (padded scenes + every patch
  array; a lower bound) exceeds 75 % of this machine's RAM, as for the Berlin-sized scene
  (~465k x 248 x 11 x 11 x 4 B = 55.8 GB of patches), it is not run: the computed need and ``.npy`` size
  are printed and the ratios are taken against them.

Usage::

    python benchmarks/bench_patches.py                                # both scenes, both variants
    python benchmarks/bench_patches.py --scenes houston --skip-naive
    python benchmarks/bench_patches.py --workdir /tmp/bench-patches   # keeps the generated scenes for reuse
    python benchmarks/bench_patches.py --save benchmarks/results/bench_patches.txt

Sizes are in GB = 1e9 bytes. The store's size depends on how well the data compress (zstd); the synthetic
1 % noise compresses poorly, real imagery may compress better or worse.

On the 2-core CI VM a full run takes about 1.5 minutes with a fresh workdir (scene generation about 10 s;
the Berlin-sized store build about 25 s and serving its 462k test patches about 15 s; Houston about 13 s
for ours and 7 s for naive), a few seconds less when ``--workdir`` already holds the scenes. It needs
about 3 GB of free disk in the workdir (the scenes, one store, the naive ``.npy`` files at a time).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.config import DatasetSpec, load_dataset, validate

SCENES = ("houston", "berlin")
GENERATOR_VERSION = 1  # bump when the synthetic scene changes, to invalidate cached workdirs
STRIP = 256  # rows generated and written at a time (the GeoTIFF tile edge)
NAIVE_RAM_FRACTION = 0.75  # the naive variant runs only if its computed need fits in this share of RAM

# A synthetic benchmark scene with HS-SAR Berlin's size (../shared/reference/datasets.md §2). Geometry
# and per-class counts only; the class names are placeholders. Not a dataset description.
BERLIN_TRAIN = (443, 423, 499, 376, 331, 280, 298, 170)  # 2820
BERLIN_TEST = (54511, 268219, 19067, 58906, 17095, 13025, 24526, 6502)  # 461851
BERLIN_BENCH: dict[str, Any] = {
    "name": "bench-berlin-sized",
    "title": "Synthetic benchmark scene with HS-SAR Berlin's size (benchmarks/bench_patches.py)",
    "task": "scene",
    "source": {"kind": "manual", "instructions": "generated by benchmarks/bench_patches.py"},
    "grid": {"height": 1723, "width": 476, "gsd_m": 13.89, "reference": "hsi"},
    "modalities": {
        "hsi": {"role": "primary", "file": "hsi.tif", "format": "geotiff", "bands": 244, "dtype": "float32"},
        "sar": {"role": "auxiliary", "file": "sar.tif", "format": "geotiff", "bands": 4, "dtype": "float32"},
    },
    "labels": {"format": "geotiff", "train": "labels_train.tif", "test": "labels_test.tif"},
    "patch_size": 11,
    "classes": [
        {
            "id": i + 1,
            "key": f"class_{i + 1}",
            "name": f"Class {i + 1}",
            "color": [(37 * i) % 256, (91 * i) % 256, (151 * i) % 256],
            "train": n_train,
            "test": n_test,
        }
        for i, (n_train, n_test) in enumerate(zip(BERLIN_TRAIN, BERLIN_TEST, strict=True))
    ],
}


# --------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    key: str
    spec: DatasetSpec
    train: dict[int, int]
    test: dict[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.spec.height, self.spec.width

    @property
    def bands(self) -> dict[str, int]:
        return {name: m.bands for name, m in self.spec.modalities.items()}

    @property
    def n_train(self) -> int:
        return sum(self.train.values())

    @property
    def n_test(self) -> int:
        return sum(self.test.values())

    @property
    def n_patches(self) -> int:
        return self.n_train + self.n_test

    def fingerprint(self) -> dict[str, Any]:
        return {
            "generator": GENERATOR_VERSION,
            "spec": self.spec.name,
            "shape": list(self.shape),
            "bands": self.bands,
            "train": {str(k): v for k, v in self.train.items()},
            "test": {str(k): v for k, v in self.test.items()},
        }


def load_scene(key: str) -> Scene:
    if key == "houston":
        spec = load_dataset("houston2013-twin")
    elif key == "berlin":
        raw = validate(json.loads(json.dumps(BERLIN_BENCH)), "dataset", "bench_patches.BERLIN_BENCH")
        spec = DatasetSpec(name=raw["name"], raw=raw, path=Path(__file__))
    else:
        raise ValueError(f"unknown scene {key!r}; choose from {SCENES}")
    train, test = spec.expected_counts("train"), spec.expected_counts("test")
    if train is None or test is None:
        raise ValueError(f"{spec.name}: the params file lists no per-class counts")
    return Scene(key, spec, train, test)


def _smooth_field(rng: np.random.Generator, k: int, height: int, width: int, cell: int) -> np.ndarray:
    """``(k, height, width)`` float32 in [0, 1): uniform noise on a coarse grid, bilinearly upsampled."""
    from scipy.ndimage import zoom

    coarse = rng.random((k, height // cell + 2, width // cell + 2))
    field = zoom(coarse, (1, height / coarse.shape[1], width / coarse.shape[2]), order=1, mode="nearest")
    assert field.shape == (k, height, width), field.shape
    return field.astype(np.float32)


def _write_modality(
    path: Path, bands: int, abundances: np.ndarray, scale: float, rng: np.random.Generator, transform: Any
) -> None:
    """A float32 GeoTIFF (the coregister profile) of ``bands`` smooth spectra mixed by ``abundances``."""
    import rasterio
    from rasterio.windows import Window

    from stages.io.raster import profile

    k, height, width = abundances.shape
    walks = rng.standard_normal((k, bands)).cumsum(axis=1)
    walks -= walks.min(axis=1, keepdims=True)
    spectra = (0.1 + walks / max(float(walks.max()), 1e-6)).T.astype(np.float32) * scale  # (bands, k)
    prof = profile(height, width, bands, "float32", transform, None)
    with rasterio.open(path, "w", **prof) as dst:
        for r0 in range(0, height, STRIP):
            rows = min(STRIP, height - r0)
            mixed = (spectra @ abundances[:, r0 : r0 + rows].reshape(k, -1)).reshape(bands, rows, width)
            mixed += rng.standard_normal(mixed.shape, dtype=np.float32) * np.float32(0.01 * scale)
            dst.write(mixed, window=Window(0, r0, width, rows))


def make_scene(scene: Scene, base: Path) -> Path:
    """``base/coreg``, generated unless a previous run left the same scene there; returns its path."""
    import rasterio
    from affine import Affine

    from stages.io.raster import GDAL_CACHE_BYTES, profile, transform_to_list, write_class_map

    coreg, stamp = base / "coreg", base / "scene.json"
    if coreg.is_dir() and stamp.is_file() and json.loads(stamp.read_text()) == scene.fingerprint():
        return coreg
    started = time.perf_counter()
    shutil.rmtree(coreg, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    tmp = base / "coreg.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    spec = scene.spec
    height, width = scene.shape
    gsd = float(spec.grid.get("gsd_m", 1.0))
    transform = Affine(gsd, 0, 0, 0, -gsd, height * gsd)
    rng = np.random.default_rng(sum(map(ord, scene.key)))

    # labels: exactly the per-class counts, at uniformly random distinct pixels
    n_train, n_test = scene.n_train, scene.n_test
    where = rng.choice(height * width, n_train + n_test, replace=False)
    for split, counts, at in (
        ("train", scene.train, where[:n_train]),
        ("test", scene.test, where[n_train:]),
    ):
        image = np.zeros(height * width, np.uint8)
        image[at] = np.repeat(np.array(list(counts), np.uint8), list(counts.values()))
        write_class_map(
            tmp / f"labels_{split}.tif",
            image.reshape(height, width),
            transform,
            None,
            spec.palette,
            spec.class_names,
        )

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        abundances = _smooth_field(rng, 6, height, width, cell=24)
        abundances /= abundances.sum(axis=0, keepdims=True)
        for name, m in spec.modalities.items():
            scale = 1000.0 if m.role == "primary" else 50.0
            _write_modality(tmp / f"{name}.tif", m.bands, abundances, scale, rng, transform)
        with rasterio.open(
            tmp / "valid.tif", "w", **profile(height, width, 1, "uint8", transform, None)
        ) as dst:
            dst.write(np.ones((1, height, width), np.uint8))

    grid = {
        "height": height,
        "width": width,
        "transform": transform_to_list(transform),
        "crs": None,
        "georeferenced": False,
        "crs_assumed": False,
        "gsd": [gsd, gsd],
    }
    sidecar = {
        "dataset": spec.name,
        "reference": spec.reference_modality,
        "synthetic": "benchmarks/bench_patches.py",
        "grid": grid,
        "modalities": {
            name: {"file": f"{name}.tif", "role": m.role, "bands": m.bands, "dtype": "float32"}
            for name, m in spec.modalities.items()
        },
        "labels": {
            "train": {str(k): v for k, v in scene.train.items()},
            "test": {str(k): v for k, v in scene.test.items()},
        },
        "valid_fraction": 1.0,
    }
    (tmp / "grid.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    tmp.rename(coreg)
    stamp.write_text(json.dumps(scene.fingerprint()))
    print(f"[{scene.key}] generated {coreg} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return coreg


# --------------------------------------------------------------------------------------------------
# Workers (run in a child process each)
# --------------------------------------------------------------------------------------------------


def _maxrss() -> int:
    """Peak resident set size of this process in bytes.

    ``VmHWM`` from ``/proc/self/status``: the high-water mark of this address space, which starts fresh
    at ``exec``. ``getrusage(RUSAGE_SELF).ru_maxrss`` is not used where VmHWM exists: Linux carries the
    forking parent's high-water mark into the exec'd child's ``ru_maxrss``, so a child would report at
    least the parent's peak (here, that of the scene generator).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def worker_ours(scene: Scene, base: Path, threads: int, batch: int) -> dict[str, Any]:
    from stages.config import load_pipeline
    from stages.data.store import ModalityBinding, PatchStore, scene_batches
    from stages.patches import build_patch_store

    rss_imports = _maxrss()
    pipeline = load_pipeline()
    split, cfg = pipeline["split"], pipeline["patches"]
    out = base / "patches.zarr"
    shutil.rmtree(out, ignore_errors=True)

    started = time.perf_counter()
    summary = build_patch_store(
        scene.spec,
        base / "coreg",
        out,
        val_fraction=split["val_fraction"],
        split_seed=split["seed"],
        chunk_samples=cfg["chunk_samples"],
        shard_samples=cfg["shard_samples"],
        scene_chunk=cfg["scene_chunk"],
        scene_shard=cfg["scene_shard"],
        threads=threads,
        scheduler=cfg["dask_scheduler"],
    )
    build_s = time.perf_counter() - started
    rss_build = _maxrss()

    started = time.perf_counter()
    store = PatchStore(out)
    binding = ModalityBinding.build(store.modalities, list(store.modalities))
    served, checksum = 0, 0.0
    for pts, primary, auxiliary in scene_batches(store, binding, batch, yx=store.yx("test")):
        served += len(pts)
        checksum += float(primary[:, 0, 0, 0].sum() + auxiliary[:, 0, 0, 0].sum())  # touch every batch
    serve_s = time.perf_counter() - started

    counts = {s: len(store.labels(s)) for s in ("train", "val", "test")}
    if served != counts["test"]:
        raise RuntimeError(f"served {served} test patches, the store has {counts['test']}")
    made = sum(counts.values())
    result = {
        "patches": made,
        "counts": counts,
        "build_s": build_s,
        "serve_s": serve_s,
        "seconds": build_s + serve_s,
        "patches_per_s": made / (build_s + serve_s),
        "rss_imports": rss_imports,
        "rss_build": rss_build,
        "rss": _maxrss(),
        "bytes": summary["bytes"],
        "files": summary["files"],
        "checksum": checksum,
    }
    shutil.rmtree(out)
    return result


def _naive_scan(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """Upstream's labelled-pixel search, kept as it is: O(H * W * K) Python steps, quadratic appends."""
    index = np.empty((0, 3), dtype=int)
    height, width = labels.shape
    for k in classes:
        for i in range(height):
            for j in range(width):
                if labels[i, j] == k:
                    index = np.append(index, [[k, i, j]], 0)
    return index


def worker_naive(scene: Scene, base: Path) -> dict[str, Any]:
    import rasterio

    rss_imports = _maxrss()
    coreg, out = base / "coreg", base / "naive"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    size = scene.spec.patch_size
    half = size // 2
    classes = [c.id for c in scene.spec.classes]
    times: dict[str, float] = {}

    started = time.perf_counter()
    padded = {}
    for name in scene.spec.modalities:
        with rasterio.open(coreg / f"{name}.tif") as ds:
            image = ds.read(out_dtype="float32").transpose(1, 2, 0)  # (H, W, C), as loadmat gives it
        low, high = image.min(axis=(0, 1)), image.max(axis=(0, 1))
        image = (image - low) / np.where(high > low, high - low, 1)  # per-band min-max, full image
        padded[name] = np.pad(image, ((half, half), (half, half), (0, 0)), mode="constant")
        del image
    labels = {}
    for split in ("train", "test"):
        with rasterio.open(coreg / f"labels_{split}.tif") as ds:
            labels[split] = ds.read(1)
    times["load_s"] = time.perf_counter() - started

    mark = time.perf_counter()
    index = {split: _naive_scan(labels[split], classes) for split in ("train", "test")}
    times["scan_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        for name, image in padded.items():
            patches = np.zeros((len(index[split]), size, size, image.shape[2]), dtype=np.float32)
            for n, (_, i, j) in enumerate(index[split]):
                patches[n] = image[i : i + size, j : j + size, :]
            arrays[f"{name}_{split}"] = patches
        arrays[f"labels_{split}"] = index[split]
    times["copy_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    for key, array in arrays.items():
        np.save(out / f"{key}.npy", array)
    times["save_s"] = time.perf_counter() - mark
    seconds = time.perf_counter() - started

    made = sum(len(ix) for ix in index.values())
    result = {
        "patches": made,
        "counts": {split: len(ix) for split, ix in index.items()},
        **times,
        "seconds": seconds,
        "patches_per_s": made / seconds,
        "rss_imports": rss_imports,
        "rss": _maxrss(),
        "bytes": _tree_bytes(out),
    }
    shutil.rmtree(out)
    return result


def naive_need(scene: Scene) -> dict[str, int]:
    """What the naive variant holds at once (a lower bound: padded scenes + every patch array) and saves."""
    height, width = scene.shape
    size = scene.spec.patch_size
    bands = sum(scene.bands.values())
    padded = (height + size - 1) * (width + size - 1) * bands * 4
    patches = scene.n_patches * size * size * bands * 4
    index = scene.n_patches * 3 * 8
    n_files = 2 * (len(scene.bands) + 1)
    return {"ram": padded + patches + index, "npy": patches + index + 128 * n_files}


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def run_child(variant: str, scene: str, workdir: Path, threads: int, batch: int) -> dict[str, Any]:
    """Re-invoke this script as a fresh process for one variant; return the JSON it prints."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)  # as stages.runtime.set_threads, without importing torch
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--scenes", scene]
    cmd += ["--workdir", str(workdir), "--threads", str(threads), "--batch", str(batch)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def report(rows: list[tuple[Scene, dict[str, Any], dict[str, Any] | None]], header: list[str]) -> str:
    ram_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    lines = [*header, ""]
    columns = f"{'scene':<8} {'variant':<7} {'patches':>8} {'build s':>8} {'serve s':>8} {'total s':>8}"
    columns += f" {'patches/s':>10} {'peak RSS':>18} {'on disk':>18}"
    lines += [columns, "-" * len(columns)]
    for scene, ours, naive in rows:
        need = naive_need(scene)
        lines.append(
            f"{scene.key:<8} {'ours':<7} {ours['patches']:>8} {ours['build_s']:>8.1f} {ours['serve_s']:>8.1f}"
            f" {ours['seconds']:>8.1f} {ours['patches_per_s']:>10.0f} {_gb(ours['rss']):>18}"
            f" {_gb(ours['bytes']):>18}"
        )
        if naive is not None and "skipped" not in naive:
            lines.append(
                f"{'':<8} {'naive':<7} {naive['patches']:>8} {'':>8} {'':>8} {naive['seconds']:>8.1f}"
                f" {naive['patches_per_s']:>10.0f} {_gb(naive['rss']):>18} {_gb(naive['bytes']):>18}"
            )
            lines.append(
                f"{'':<8} ratio ours/naive: patches/s {ours['patches_per_s'] / naive['patches_per_s']:.2f}x,"
                f" peak RSS {ours['rss'] / naive['rss']:.3f}x, size {ours['bytes'] / naive['bytes']:.3f}x"
            )
        elif naive is not None:
            lines.append(
                f"{'':<8} {'naive':<7} {scene.n_patches:>8} {'':>8} {'':>8} {'not run':>8} {'n/a':>10}"
                f" {'>= ' + _gb(need['ram']) + ' (c)':>18} {_gb(need['npy']) + ' (c)':>18}"
            )
            lines.append(
                f"{'':<8} ratio ours/naive: patches/s n/a (naive not run: needs >= {_gb(need['ram'])},"
                f" this machine has {_gb(ram_total)}), peak RSS {ours['rss'] / need['ram']:.3f}x (c),"
                f" size {ours['bytes'] / need['npy']:.3f}x (c)"
            )
    lines += ["", "(c) computed, not measured. Details:"]
    for scene, ours, naive in rows:
        need = naive_need(scene)
        h, w = scene.shape
        bands = " + ".join(map(str, scene.bands.values()))
        lines.append(
            f"  {scene.key}: {scene.spec.name}, {h} x {w}, {bands} bands, P = {scene.spec.patch_size},"
            f" {scene.n_train} train + {scene.n_test} test labelled pixels"
        )
        c = ours["counts"]
        lines.append(
            f"    ours: {c['train']} train + {c['val']} val patches stored, {c['test']} test patches served;"
            f" {ours['files']} files; peak RSS after build {_gb(ours['rss_build'])}, after serving"
            f" {_gb(ours['rss'])} (interpreter + imports {_gb(ours['rss_imports'])})"
        )
        if naive is not None and "skipped" not in naive:
            lines.append(
                f"    naive: load + min-max + pad {naive['load_s']:.1f} s,"
                f" Python scan {naive['scan_s']:.1f} s, patch copy {naive['copy_s']:.1f} s,"
                f" np.save {naive['save_s']:.1f} s; computed need"
                f" >= {_gb(need['ram'])}, measured {_gb(naive['rss'])}"
                f" (interpreter + imports {_gb(naive['rss_imports'])})"
            )
        elif naive is not None:
            lines.append(
                f"    naive: not run: needs >= {_gb(need['ram'])} (padded scene + {scene.n_patches} x"
                f" {sum(scene.bands.values())} x {scene.spec.patch_size}^2 float32 patches),"
                f" {naive['skipped']}; would save {_gb(need['npy'])} of .npy"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=SCENES)
    parser.add_argument("--skip-naive", action="store_true", help="measure only the landfuse patch stage")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep generated scenes here (default: a temp dir)"
    )
    parser.add_argument("--threads", type=int, default=None, help="default: params/pipeline.yaml's patches")
    parser.add_argument("--batch", type=int, default=1024, help="scene_batches batch size (evaluate's)")
    parser.add_argument("--save", type=Path, default=None, help="also write the printed table here")
    parser.add_argument("--worker", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # child process: one variant, one scene, JSON on stdout
        scene = load_scene(args.scenes[0])
        base = args.workdir / scene.key
        if args.worker == "ours":
            result = worker_ours(scene, base, args.threads, args.batch)
        else:
            result = worker_naive(scene, base)
        print(json.dumps(result))
        return

    from stages.config import load_pipeline

    threads = args.threads or load_pipeline()["threads"]["patches"]
    ram_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    import xarray
    import zarr

    header = [
        f"bench_patches: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {platform.machine()},"
        f" {os.cpu_count()} CPUs, {_gb(ram_total)} RAM; Python {platform.python_version()},"
        f" numpy {np.__version__}, zarr {zarr.__version__}, xarray {xarray.__version__};"
        f" ours: {threads} threads, test batch {args.batch}",
        "patches/s: ours = (train + val + test) / (build + serve); naive = (train + test) / total."
        " peak RSS: VmHWM of a fresh child process per variant.",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-patches-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        rows = []
        for key in args.scenes:
            scene = load_scene(key)
            make_scene(scene, workdir / key)
            ours = run_child("ours", key, workdir, threads, args.batch)
            print(f"[{key}] ours: {json.dumps(ours)}", file=sys.stderr, flush=True)
            naive: dict[str, Any] | None = None
            if not args.skip_naive:
                need = naive_need(scene)["ram"]
                if need > NAIVE_RAM_FRACTION * ram_total:
                    naive = {"skipped": f"over {NAIVE_RAM_FRACTION:.0%} of this machine's {_gb(ram_total)}"}
                else:
                    naive = run_child("naive", key, workdir, threads, args.batch)
                print(f"[{key}] naive: {json.dumps(naive)}", file=sys.stderr, flush=True)
            rows.append((scene, ours, naive))
    text = report(rows, header)
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n")


if __name__ == "__main__":
    main()
