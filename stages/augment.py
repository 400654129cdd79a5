"""Stage ``augment``: a class-conditional GAN over training patches, and its synthetic patches.

``python -m stages.augment --dataset NAME --store results/NAME/patches.zarr --out results/NAME/augmented.zarr
--quality results/NAME/augment/quality.json``

The WGAN-GP of :mod:`stages.gan.wgan` is trained on the ``train`` group only (never ``val`` or
``test``), all modalities jointly. It then writes ``samples_per_class`` patches per class to
``augmented.zarr``, laid out like the store's ``train`` group (``train/<mod>/data``,
``train/label``), so the training stage can add it as a second source.

Quality, in ``quality.json`` and a figure of mean spectra:

* per class and multi-band modality, the spectral angle (degrees) between the mean generated and the
  mean real training spectrum, in physical units (de-normalised); beside it, the angle between the
  real train and real validation means of the class, the natural sampling floor;
* train-on-synthetic / test-on-real (TSTR): a logistic regression on centre-pixel and patch-mean
  features, trained on the synthetic patches and scored on the real validation patches, next to the
  same classifier trained on the real training patches (TRTR).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import torch
import xarray as xr
import zarr
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stages.config import load_model
from stages.data.store import ModalityBinding, PatchStore, TrainingBatches, read_split
from stages.gan.wgan import Generator, ProjectionCritic, critic_loss, generator_loss, sample_noise
from stages.io.atomic import atomic_dir, write_json
from stages.io.logs import progress, setup_logging
from stages.patches import COMPRESSORS
from stages.runtime import pick_device, seed_everything, set_threads

log = logging.getLogger("landfuse.augment")


def _all_modalities(store: PatchStore) -> ModalityBinding:
    names = tuple(store.modalities)
    # every modality into the first input, in store order; the second stays empty
    return ModalityBinding(primary=names, auxiliary=())


def train_gan(
    store: PatchStore, arch: dict[str, Any], cfg: dict[str, Any], seed: int, device: torch.device
) -> Generator:
    binding = _all_modalities(store)
    channels = sum(m["bands"] for m in store.modalities.values())
    gen_model = Generator(channels, store.n_classes, store.patch_size, arch["z_dim"], arch["g_width"]).to(
        device
    )
    critic = ProjectionCritic(channels, store.n_classes, arch["d_width"]).to(device)
    betas = tuple(cfg["optimizer"].get("betas", (0.0, 0.9)))
    opt_g = torch.optim.Adam(gen_model.parameters(), lr=cfg["optimizer"]["lr"], betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=cfg["optimizer"]["lr"], betas=betas)
    batches = TrainingBatches([(store, "train")], binding, store.class_ids, cfg["batch_size"])
    rng = np.random.default_rng([seed, 7])
    gen = torch.Generator().manual_seed(seed)
    n_critic, gp_weight = cfg.get("n_critic", 5), cfg.get("gp_weight", 10.0)

    def real_batches():
        while True:
            yield from batches.epoch(rng, drop_last=True)

    stream = real_batches()
    for step in progress(range(1, cfg["epochs"] + 1), desc="GAN", unit="step"):
        for _ in range(n_critic):
            real, _, y = next(stream)
            real, y = torch.from_numpy(real).to(device), torch.from_numpy(y).to(device)
            with torch.no_grad():
                fake = gen_model(sample_noise(len(y), gen_model.z_dim, gen).to(device), y)
            loss_d = critic_loss(critic, real, fake, y, gp_weight, gen)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        y = torch.from_numpy(rng.integers(0, store.n_classes, cfg["batch_size"])).to(device)
        loss_g = generator_loss(
            critic, gen_model(sample_noise(len(y), gen_model.z_dim, gen).to(device), y), y
        )
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if step % 100 == 0 or step == cfg["epochs"]:
            log.info("step %d: critic %.3f generator %.3f", step, float(loss_d), float(loss_g))
    return gen_model.eval()


def synthesise(gen_model: Generator, labels: np.ndarray, seed: int, block: int) -> da.Array:
    """All-modality patches for class indices ``labels`` as a dask array, one seeded draw per block."""
    channels = gen_model.body[-1].out_channels
    p = gen_model.patch_size

    def make(block_info: dict[Any, Any] | None = None) -> np.ndarray:
        (i0, i1), *_ = block_info[None]["array-location"]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i0)
        with torch.inference_mode():
            y = torch.from_numpy(labels[i0:i1])
            return gen_model(sample_noise(len(y), gen_model.z_dim, gen), y).numpy().astype(np.float32)

    chunks = (
        tuple(min(block, len(labels) - i) for i in range(0, len(labels), block)),
        (channels,),
        (p,),
        (p,),
    )
    return da.map_blocks(make, dtype=np.float32, chunks=chunks, meta=np.empty((0, 0, 0, 0), np.float32))


def _features(patches: np.ndarray) -> np.ndarray:
    c = patches.shape[-1] // 2
    return np.concatenate([patches[:, :, c, c], patches.mean(axis=(2, 3))], axis=1)


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def quality(store: PatchStore, synthetic: np.ndarray, syn_y: np.ndarray, seed: int) -> dict[str, Any]:
    """Spectral angles and TSTR vs TRTR accuracy (see module docstring). ``synthetic`` is normalised."""
    names = tuple(store.modalities)
    real = {s: read_split(store, s, names) for s in ("train", "val")}
    norm = store.attrs["normalisation"]
    out: dict[str, Any] = {"spectral_angle_deg": {}, "real_train_vs_val_angle_deg": {}}
    offset = 0
    for name, meta in store.modalities.items():
        bands = meta["bands"]
        sl = slice(offset, offset + bands)
        offset += bands
        if bands < 2:
            continue  # a spectral angle needs a spectrum
        mean, std = np.array(norm[name]["mean"]), np.array(norm[name]["std"])

        def class_mean(x: np.ndarray, y: np.ndarray, k: int, sl=sl, mean=mean, std=std) -> np.ndarray:
            return x[y == k][:, sl].mean(axis=(0, 2, 3)) * std + mean

        angles, floor = {}, {}
        for k, c in enumerate(store.classes):
            ref = class_mean(real["train"][0], real["train"][1], k)
            angles[c["key"]] = _angle(class_mean(synthetic, syn_y, k), ref)
            if (real["val"][1] == k).any():
                floor[c["key"]] = _angle(class_mean(real["val"][0], real["val"][1], k), ref)
        out["spectral_angle_deg"][name] = angles
        out["real_train_vs_val_angle_deg"][name] = floor
        out.setdefault("mean_spectral_angle_deg", {})[name] = float(np.mean(list(angles.values())))

    def fit_score(x: np.ndarray, y: np.ndarray) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        clf.fit(_features(x), y)
        return float((clf.predict(_features(real["val"][0])) == real["val"][1]).mean())

    out["tstr_val_accuracy"] = fit_score(synthetic, syn_y)
    out["trtr_val_accuracy"] = fit_score(real["train"][0], real["train"][1])
    return out


def plot_spectra(path: Path, store: PatchStore, synthetic: np.ndarray, syn_y: np.ndarray) -> None:
    """Mean real vs generated spectra of the primary (first multi-band) modality, one panel per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages.plots import _save

    real_x, real_y = read_split(store, "train", tuple(store.modalities))
    offset, name = 0, None
    for n, meta in store.modalities.items():
        if meta["bands"] >= 2:
            name = n
            break
        offset += meta["bands"]
    if name is None:
        return
    meta, norm = store.modalities[name], store.attrs["normalisation"][name]
    sl = slice(offset, offset + meta["bands"])
    mean, std = np.array(norm["mean"]), np.array(norm["std"])
    x = np.array(meta["wavelengths_nm"]) if meta.get("wavelengths_nm") else np.arange(meta["bands"])
    k = store.n_classes
    cols = 5
    fig, axes = plt.subplots(-(-k // cols), cols, figsize=(3 * cols, 2.2 * -(-k // cols)), squeeze=False)
    for i, c in enumerate(store.classes):
        ax = axes.ravel()[i]
        color = np.array(c["color"]) / 255
        ax.plot(
            x, real_x[real_y == i][:, sl].mean(axis=(0, 2, 3)) * std + mean, color="k", lw=1, label="real"
        )
        ax.plot(
            x,
            synthetic[syn_y == i][:, sl].mean(axis=(0, 2, 3)) * std + mean,
            color=color,
            lw=1,
            ls="--",
            label="GAN",
        )
        ax.set_title(c["name"], fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[k:]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=6)
    _save(fig, path)


def augment(
    store_path: Path,
    out: Path,
    quality_path: Path,
    *,
    samples_per_class: int,
    preset: str,
    seed: int = 0,
    threads: int = 2,
    device: str = "auto",
    steps: int | None = None,
) -> dict[str, Any]:
    """Train the GAN, write the synthetic store and the quality report.

    ``steps`` overrides the preset's generator steps (smoke runs); the report records what ran.
    """
    set_threads(threads)
    seed_everything(seed)
    dev = pick_device(device)
    spec = load_model("wgan_gp", preset)
    cfg = {**spec.training, "epochs": steps or spec.training["epochs"]}
    store = PatchStore(store_path)
    gen_model = train_gan(store, spec.architecture, cfg, seed, dev).cpu()

    labels = np.tile(np.arange(store.n_classes), samples_per_class)  # interleaved classes
    chunk = int(store.patches("train", next(iter(store.modalities))).chunks[0])
    patches = synthesise(gen_model, labels, seed, block=chunk * 8)
    with dask.config.set(scheduler="synchronous"):
        # K x N patches (samples_per_class is small by design); the quality report reads them all
        synthetic = patches.compute()
    with atomic_dir(out) as tmp:
        meta = xr.Dataset({"label": ("sample", store.class_ids[labels].astype(np.uint8))})
        meta.to_zarr(tmp, group="train", mode="w", zarr_format=3, consolidated=False)
        offset = 0
        for name, m in store.modalities.items():
            part = synthetic[:, offset : offset + m["bands"]]
            offset += m["bands"]
            enc = {"data": {"chunks": (chunk, *part.shape[1:]), "compressors": COMPRESSORS}}
            xr.Dataset({"data": (("sample", "band", "y", "x"), part)}).to_zarr(
                tmp, group=f"train/{name}", mode="w", zarr_format=3, consolidated=False, encoding=enc
            )
        attrs = dict(store.attrs)
        attrs.update(
            synthetic=True, generator="wgan_gp", preset=preset, seed=seed, samples_per_class=samples_per_class
        )
        zarr.open_group(tmp, mode="r+").attrs.update(attrs)
    report = quality(store, synthetic, labels, seed)
    report.update(
        generator_steps=cfg["epochs"],
        generator="wgan_gp",
        preset=preset,
        seed=seed,
        samples_per_class=samples_per_class,
        trained_on="train split only",
    )
    write_json(quality_path, report)
    plot_spectra(quality_path.with_name("spectra.png"), store, synthetic, labels)
    log.info(
        "GAN quality: mean spectral angle %s deg, TSTR %.3f vs TRTR %.3f",
        report.get("mean_spectral_angle_deg"),
        report["tstr_val_accuracy"],
        report["trtr_val_accuracy"],
    )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--store", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quality", required=True, type=Path, help="results/<dataset>/augment/quality.json")
    parser.add_argument("--samples-per-class", type=int, required=True)
    parser.add_argument("--preset", default="quick", choices=("quick", "paper"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's generator steps")
    args = parser.parse_args(argv)
    setup_logging()
    augment(
        args.store,
        args.out,
        args.quality,
        samples_per_class=args.samples_per_class,
        preset=args.preset,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        steps=args.steps,
    )


if __name__ == "__main__":
    main()
