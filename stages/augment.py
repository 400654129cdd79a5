"""Stage ``augment``: a class-conditional GAN over training patches (tiles), and its synthetic ones.

``python -m stages.augment --dataset NAME --store results/NAME/patches.zarr --out results/NAME/augmented.zarr
--quality results/NAME/augment/quality.json``

The WGAN-GP of :mod:`stages.gan.wgan` is trained on the ``train`` group only (never ``val`` or
``test``), all modalities jointly. It then writes ``samples_per_class`` patches per class to
``augmented.zarr``, laid out like the store's ``train`` group (``train/<mod>/data``,
``train/label``), so the training stage can add it as a second source.

Tile datasets get a label-conditioned generator instead (:mod:`stages.gan.pix2pix`, label map -> all
modalities), trained on crops of the training tiles; it synthesises whole tiles from real training
label maps, flipped, rotated and recombined from quadrants of different tiles.

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
from collections.abc import Iterator
from dataclasses import dataclass
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
from stages.data.segmentation import TileCrops, dihedral
from stages.data.store import ModalityBinding, PatchStore, TrainingBatches, read_split
from stages.gan import pix2pix
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
            log.info(
                "step %d: critic %.3f generator %.3f", step, float(loss_d.detach()), float(loss_g.detach())
            )
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


@dataclass
class Samples:
    """What the quality report compares: per-sample spectra and classifier features, with classes.

    Patches contribute one sample each (the patch-mean spectrum; features: centre pixel and patch
    mean); tiles contribute labelled pixels (spectrum = features = the pixel's bands). All in the
    store's normalised units, every modality's bands side by side.
    """

    spectra: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,) class indices
    features: np.ndarray  # (N, F)

    @classmethod
    def from_patches(cls, patches: np.ndarray, labels: np.ndarray) -> Samples:
        c = patches.shape[-1] // 2
        mean = patches.mean(axis=(2, 3))
        return cls(mean, labels, np.concatenate([patches[:, :, c, c], mean], axis=1))

    @classmethod
    def from_tiles(
        cls, tiles: np.ndarray, labels: np.ndarray, rng: np.random.Generator, limit: int
    ) -> Samples:
        """A random subset of at most ``limit`` labelled pixels (``labels`` -1 = none)."""
        flat = np.moveaxis(tiles, 1, -1).reshape(-1, tiles.shape[1])
        idx = np.nonzero(labels.reshape(-1) >= 0)[0]
        idx = np.sort(rng.choice(idx, size=min(limit, len(idx)), replace=False))
        return cls(flat[idx], labels.reshape(-1)[idx], flat[idx])


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _spectral_modalities(store: PatchStore) -> Iterator[tuple[str, slice, np.ndarray, np.ndarray]]:
    """(name, band slice, mean, std) of each spectral modality (bands with wavelengths), in store order."""
    offset = 0
    for name, meta in store.modalities.items():
        sl = slice(offset, offset + meta["bands"])
        offset += meta["bands"]
        if meta["bands"] >= 2 and meta.get("wavelengths_nm"):  # an angle needs a spectrum (not DSM, not SAR)
            norm = store.attrs["normalisation"][name]
            yield name, sl, np.array(norm["mean"]), np.array(norm["std"])


def _class_mean(samples: Samples, k: int, sl: slice, mean: np.ndarray, std: np.ndarray) -> np.ndarray | None:
    sel = samples.labels == k
    return samples.spectra[sel][:, sl].mean(axis=0) * std + mean if sel.any() else None


def quality(store: PatchStore, train: Samples, val: Samples, synthetic: Samples, seed: int) -> dict[str, Any]:
    """Spectral angles and TSTR vs TRTR accuracy (see module docstring)."""
    out: dict[str, Any] = {"spectral_angle_deg": {}, "real_train_vs_val_angle_deg": {}}
    for name, sl, mean, std in _spectral_modalities(store):
        angles, floor = {}, {}
        for k, c in enumerate(store.classes):
            ref = _class_mean(train, k, sl, mean, std)
            gen, held = _class_mean(synthetic, k, sl, mean, std), _class_mean(val, k, sl, mean, std)
            if ref is None:
                continue  # a class absent from training (e.g. DFC 2020's savanna) has nothing to match
            if gen is not None:
                angles[c["key"]] = _angle(gen, ref)
            if held is not None:
                floor[c["key"]] = _angle(held, ref)
        out["spectral_angle_deg"][name] = angles
        out["real_train_vs_val_angle_deg"][name] = floor
        out.setdefault("mean_spectral_angle_deg", {})[name] = float(np.mean(list(angles.values())))

    def fit_score(source: Samples) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        clf.fit(source.features, source.labels)
        return float((clf.predict(val.features) == val.labels).mean())

    out["tstr_val_accuracy"] = fit_score(synthetic)
    out["trtr_val_accuracy"] = fit_score(train)
    return out


def plot_spectra(path: Path, store: PatchStore, train: Samples, synthetic: Samples) -> None:
    """Mean real vs generated spectra of the first multi-band modality, one panel per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages.plots import _save

    first = next(_spectral_modalities(store), None)
    if first is None:  # no modality lists band centres: the rule still expects its figure
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no modality lists wavelengths_nm: no spectra", ha="center", va="center")
        _save(fig, path)
        return
    name, sl, mean, std = first
    meta = store.modalities[name]
    x = np.array(meta["wavelengths_nm"]) if meta.get("wavelengths_nm") else np.arange(meta["bands"])
    k, cols = store.n_classes, 5
    fig, axes = plt.subplots(-(-k // cols), cols, figsize=(3 * cols, 2.2 * -(-k // cols)), squeeze=False)
    for i, c in enumerate(store.classes):
        ax = axes.ravel()[i]
        for samples, style in (
            (train, {"color": "k", "label": "real"}),
            (synthetic, {"color": np.array(c["color"]) / 255, "ls": "--", "label": "GAN"}),
        ):
            spectrum = _class_mean(samples, i, sl, mean, std)
            if spectrum is not None:
                ax.plot(x, spectrum, lw=1, **style)
        ax.set_title(c["name"], fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[k:]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=6)
    _save(fig, path)


def augment_tiles(
    store: PatchStore,
    out: Path,
    quality_path: Path,
    *,
    n_tiles: int,
    preset: str,
    seed: int,
    device: torch.device,
    steps: int | None = None,
) -> dict[str, Any]:
    """Tile datasets: train pix2pix on training-tile crops, then synthesise ``n_tiles`` whole tiles from
    real training label maps, each flipped/rotated and recombined from quadrants of four tiles."""
    spec = load_model("pix2pix", preset)
    arch, cfg = spec.architecture, {**spec.training, "epochs": steps or spec.training["epochs"]}
    names = tuple(store.modalities)
    binding = ModalityBinding(primary=names, auxiliary=())
    channels = sum(m["bands"] for m in store.modalities.values())
    crops = TileCrops(
        [(store, "train")], binding, store.class_ids, cfg["tile_size"], cfg["batch_size"], augment=True
    )
    gen = pix2pix.UNetGenerator(store.n_classes, channels, arch["width"], arch["depth"], arch["dropout"]).to(
        device
    )
    disc = pix2pix.PatchDiscriminator(store.n_classes, channels, arch["d_width"], arch["d_layers"]).to(device)
    betas = tuple(cfg["optimizer"].get("betas", (0.5, 0.999)))
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg["optimizer"]["lr"], betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg["optimizer"]["lr"], betas=betas)
    rng = np.random.default_rng([seed, 7])

    def batches():
        while True:
            yield from crops.epoch(rng)

    stream = batches()
    for step in progress(range(1, cfg["epochs"] + 1), desc="pix2pix", unit="step"):
        real, _, labels = next(stream)
        real, labels = torch.from_numpy(real).to(device), torch.from_numpy(labels).to(device)
        fake = gen(labels)
        loss_d = pix2pix.discriminator_loss(disc, labels, real, fake)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = pix2pix.generator_loss(disc, labels, real, fake, cfg["l1_weight"])
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if step % 100 == 0 or step == cfg["epochs"]:
            log.info(
                "step %d: discriminator %.3f generator %.3f",
                step,
                float(loss_d.detach()),
                float(loss_g.detach()),
            )

    # label maps for synthesis: quadrants of four random training tiles, each flipped/rotated
    train_labels = crops.labels[0]  # (N, T, T) class indices, -1 = none
    size = train_labels.shape[-1]
    half = size // 2
    maps = np.empty((n_tiles, size, size), dtype=np.int64)
    for k in range(n_tiles):
        for r, c in ((0, 0), (0, half), (half, 0), (half, half)):
            src = train_labels[int(rng.integers(len(train_labels)))]
            rq, cq = half * rng.integers(0, 2, size=2)
            quad = src[rq : rq + half, cq : cq + half]
            maps[k, r : r + half, c : c + half] = dihedral(quad, int(rng.integers(0, 8)))
    gen.eval()
    for module in gen.modules():  # pix2pix samples with dropout on: it is the generator's noise
        if isinstance(module, torch.nn.Dropout):
            module.train()
    torch.manual_seed(seed)
    with torch.inference_mode():
        synthetic = np.concatenate(
            [gen(torch.from_numpy(maps[i : i + 4]).to(device)).cpu().numpy() for i in range(0, n_tiles, 4)]
        ).astype(np.float32)
    class_ids = np.concatenate([[0], store.class_ids]).astype(np.uint8)  # index -1 -> id 0 (no label)
    with atomic_dir(out) as tmp:
        meta = xr.Dataset(
            {
                "label": (("sample", "y", "x"), class_ids[maps + 1]),
                "tile": ("sample", np.arange(n_tiles, dtype=np.int64)),
            }
        )
        meta.to_zarr(tmp, group="train", mode="w", zarr_format=3, consolidated=False)
        offset = 0
        for name, m in store.modalities.items():
            part = synthetic[:, offset : offset + m["bands"]]
            offset += m["bands"]
            enc = {"data": {"chunks": (1, *part.shape[1:]), "compressors": COMPRESSORS}}
            xr.Dataset({"data": (("sample", "band", "y", "x"), part)}).to_zarr(
                tmp, group=f"train/{name}", mode="w", zarr_format=3, consolidated=False, encoding=enc
            )
        attrs = dict(store.attrs)
        attrs.update(synthetic=True, generator="pix2pix", preset=preset, seed=seed, synthetic_tiles=n_tiles)
        zarr.open_group(tmp, mode="r+").attrs.update(attrs)
    limit = 20_000
    val = TileCrops([(store, "val")], binding, store.class_ids, size, 1)
    train_samples = Samples.from_tiles(
        np.concatenate([crops.arrays[0][n] for n in names], axis=1), train_labels, rng, limit
    )
    val_samples = Samples.from_tiles(
        np.concatenate([val.arrays[0][n] for n in names], axis=1), val.labels[0], rng, limit
    )
    syn_samples = Samples.from_tiles(synthetic, maps, rng, limit)
    report = quality(store, train_samples, val_samples, syn_samples, seed)
    report.update(
        generator="pix2pix",
        preset=preset,
        seed=seed,
        synthetic_tiles=n_tiles,
        generator_steps=cfg["epochs"],
        trained_on="train split only",
    )
    write_json(quality_path, report)
    plot_spectra(quality_path.with_name("spectra.png"), store, train_samples, syn_samples)
    log.info(
        "pix2pix quality: mean spectral angle %s deg, TSTR %.3f vs TRTR %.3f",
        report.get("mean_spectral_angle_deg"),
        report["tstr_val_accuracy"],
        report["trtr_val_accuracy"],
    )
    return report


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
    synthetic_tiles: int = 32,
) -> dict[str, Any]:
    """Train the GAN, write the synthetic store and the quality report.

    ``steps`` overrides the preset's generator steps (smoke runs); the report records what ran.
    """
    set_threads(threads)
    seed_everything(seed)
    dev = pick_device(device)
    store = PatchStore(store_path)
    if store.attrs.get("task") == "tiles":
        return augment_tiles(
            store,
            out,
            quality_path,
            n_tiles=synthetic_tiles,
            preset=preset,
            seed=seed,
            device=dev,
            steps=steps,
        )
    spec = load_model("wgan_gp", preset)
    cfg = {**spec.training, "epochs": steps or spec.training["epochs"]}
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
    names = tuple(store.modalities)
    train_samples = Samples.from_patches(*read_split(store, "train", names))
    val_samples = Samples.from_patches(*read_split(store, "val", names))
    syn_samples = Samples.from_patches(synthetic, labels)
    report = quality(store, train_samples, val_samples, syn_samples, seed)
    report.update(
        generator_steps=cfg["epochs"],
        generator="wgan_gp",
        preset=preset,
        seed=seed,
        samples_per_class=samples_per_class,
        trained_on="train split only",
    )
    write_json(quality_path, report)
    plot_spectra(quality_path.with_name("spectra.png"), store, train_samples, syn_samples)
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
    parser.add_argument("--synthetic-tiles", type=int, default=32, help="tile datasets: tiles to synthesise")
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
        synthetic_tiles=args.synthetic_tiles,
    )


if __name__ == "__main__":
    main()
