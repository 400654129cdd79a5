"""Stage ``report``: ``results/<dataset>/all``, the one folder a reader opens.

``python -m stages.report index --out results/NAME/runs/index.json results/NAME/runs/*/seed*/metrics.json``
``python -m stages.report build --dataset NAME --results results/NAME --index results/NAME/runs/index.json
--out results/NAME/all``

* ``table.md`` / ``table.csv``: every experiment (model x modalities) as mean ± std over seeds of
  test OA, AA, kappa and macro F1; ``per_class.csv``: mean per-class accuracy.
* ``figures/``: the test ground truth beside each experiment's map, the confusion matrices (summed
  over seeds) and per-class accuracy bars.
* ``report.md``: the table, the GAN's quality, the data summary and provenance.
* ``manifest.json``: the sha256 and size of every artifact under ``results/<dataset>/`` (logs and
  Snakemake benchmarks excluded; they are diagnostics, not artifacts).

Beside the folder, for DVC: ``results/<dataset>/metrics.json`` (``dvc metrics show``) and
``results/<dataset>/curves/<experiment>.csv``, the validation curve of each experiment's first seed
(``dvc plots show`` draws one line per file).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from stages.data.segmentation import MOSAIC_TILES, mosaic
from stages.data.store import PatchStore
from stages.io.atomic import atomic_dir, write_json
from stages.io.hashing import sha256_file, tree_files
from stages.io.logs import setup_logging
from stages.plots import plot_confusion, plot_maps, plot_per_class
from stages.runtime import environment_info

log = logging.getLogger("landfuse.report")

EXCLUDED = ("logs", "benchmarks", "all")
SCORES = (
    ("oa", "OA %", 100.0),
    ("aa", "AA %", 100.0),
    ("miou", "mIoU %", 100.0),
    ("kappa", "kappa", 1.0),
    ("f1_macro", "F1 %", 100.0),
)


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def collect(run_dirs: list[Path]) -> OrderedDict[str, list[dict[str, Any]]]:
    """Evaluation results grouped by experiment, in the pipeline's order."""
    groups: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for run in run_dirs:
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["run_dir"] = run
        metrics["test"]["f1_macro"] = float(np.nanmean(metrics["test"]["per_class_f1"]))
        groups.setdefault(metrics["experiment"], []).append(metrics)
    return groups


def summary_rows(groups: OrderedDict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for name, runs in groups.items():
        row: dict[str, Any] = {
            "experiment": name,
            "model": runs[0]["model"],
            "modalities": "+".join(runs[0]["modalities"]),
            "seeds": len(runs),
        }
        for key, _, _ in SCORES:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r["test"][key] for r in runs])
        rows.append(row)
    return rows


def _fmt(mean: float, std: float, scale: float, seeds: int) -> str:
    digits = 2 if scale == 100.0 else 4
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if seeds > 1 else "")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ["experiment", "model", "modalities", "seeds", *(label for _, label, _ in SCORES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["experiment"], r["model"], r["modalities"], str(r["seeds"])]
        cells += [_fmt(r[f"{k}_mean"], r[f"{k}_std"], scale, r["seeds"]) for k, _, scale in SCORES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def per_class(groups: OrderedDict[str, list[dict[str, Any]]], names: list[str]) -> dict[str, list[float]]:
    return {
        exp: np.nanmean([r["test"]["per_class_accuracy"] for r in runs], axis=0).tolist()
        for exp, runs in groups.items()
    }


def manifest(results: Path, extra_root: Path) -> dict[str, Any]:
    """sha256 and size of every artifact under ``results`` (a zarr store counts file by file)."""
    entries = {}
    for path in tree_files(results, exclude=EXCLUDED):
        rel = path.relative_to(results)
        if rel.parts[0].startswith("."):
            continue  # an atomic write in flight (e.g. this report's own temporary folder)
        entries[rel.as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    for path in tree_files(extra_root):
        rel = Path("all") / path.relative_to(extra_root)
        entries[rel.as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return {"root": results.name, "files": dict(sorted(entries.items()))}


def write_curves(groups: OrderedDict[str, list[dict[str, Any]]], folder: Path) -> None:
    with atomic_dir(folder) as tmp:
        for exp, runs in groups.items():
            history = json.loads((runs[0]["run_dir"] / "train.json").read_text())["history"]
            lines = ["epoch,val_oa,train_loss"] + [
                f"{h['epoch']},{h['val_oa']:.6f},{h['train_loss']:.6f}" for h in history
            ]
            (tmp / f"{exp}.csv").write_text("\n".join(lines) + "\n")


def build_report(dataset: str, results: Path, run_dirs: list[Path], out: Path) -> dict[str, Any]:
    groups = collect(run_dirs)
    if not groups:
        raise ValueError(f"{results}: no evaluated runs to report")
    names = groups[next(iter(groups))][0]["classes"]
    rows = summary_rows(groups)
    quality = json.loads((results / "augment" / "quality.json").read_text())
    data = json.loads((results / "patches.json").read_text())
    store = PatchStore(results / "patches.zarr")
    palette = [tuple(c["color"]) for c in store.classes]
    tiles = store.attrs.get("task") == "tiles"
    if tiles:
        coreg = json.loads((results / "coreg" / "tiles.json").read_text())
        labels = store.root["test/label"]
        truth = mosaic([np.asarray(labels[i]) for i in range(min(MOSAIC_TILES, labels.shape[0]))])
    else:
        coreg = json.loads((results / "coreg" / "grid.json").read_text())
        with rasterio.open(results / "coreg" / "labels_test.tif") as ds:
            truth = ds.read(1)

    with atomic_dir(out) as tmp:
        figures = tmp / "figures"
        figures.mkdir()
        (tmp / "table.md").write_text(markdown_table(rows))
        (tmp / "table.csv").write_text(csv_text(rows))
        classes = per_class(groups, names)
        per_class_rows = [
            {"class": n, **{e: f"{v[i]:.6f}" for e, v in classes.items()}} for i, n in enumerate(names)
        ]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(per_class_rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(per_class_rows)
        (tmp / "per_class.csv").write_text(buf.getvalue())
        summary = {r["experiment"]: {k: v for k, v in r.items() if k != "experiment"} for r in rows}
        write_json(results / "metrics.json", summary)
        write_curves(groups, results / "curves")

        maps, titles = [truth], [f"test ground truth{' (first test tiles)' if tiles else ''}"]
        for exp, runs in groups.items():
            with rasterio.open(runs[0]["run_dir"] / "map.tif") as ds:
                maps.append(ds.read(1))
            titles.append(f"{exp} (seed {runs[0]['seed']}): OA {runs[0]['test']['oa'] * 100:.2f}%")
        plot_maps(figures / "maps.png", maps, titles, palette, names)
        for exp, runs in groups.items():
            cm = sum(
                np.loadtxt(
                    r["run_dir"] / "confusion.csv",
                    delimiter=",",
                    skiprows=1,
                    usecols=range(1, len(names) + 1),
                    dtype=np.int64,
                )
                for r in runs
            )
            plot_confusion(
                figures / f"confusion_{exp}.png", cm, names, f"{exp} ({len(runs)} seed(s), summed)"
            )
        plot_per_class(figures / "per_class.png", classes, names, "test accuracy (mean over seeds)")
        (tmp / "report.md").write_text(report_markdown(dataset, rows, groups, quality, data, coreg))
        write_json(tmp / "manifest.json", manifest(results, tmp))
    log.info("report for %s: %d experiments, %d runs", dataset, len(groups), sum(map(len, groups.values())))
    return {"rows": rows}


def _data_lines(coreg: dict[str, Any]) -> list[str]:
    if coreg.get("task") == "tiles":
        sets = ", ".join(f"{name} {len(ids)}" for name, ids in coreg["sets"].items())
        return [
            f"- tiles: {sets} ({coreg['tile_size']} x {coreg['tile_size']} px), CRS "
            + ", ".join(coreg["crs"]),
            f"- co-registration: {coreg['check']}",
            "- NaN fraction per modality: "
            + ", ".join(f"{m} {v:.2e}" for m, v in coreg["nan_fraction"].items()),
        ]
    shifts = ", ".join(
        f"{m}: ({v['shift_px']['dy']:+.2f}, {v['shift_px']['dx']:+.2f})"
        for m, v in coreg["modalities"].items()
    )
    return [
        f"- grid: {coreg['grid']['height']} x {coreg['grid']['width']}, CRS {coreg['grid']['crs']}",
        f"- residual shifts vs the reference (px): {shifts}",
    ]


def report_markdown(
    dataset: str,
    rows: list[dict[str, Any]],
    groups: OrderedDict[str, list[dict[str, Any]]],
    quality: dict[str, Any],
    data: dict[str, Any],
    coreg: dict[str, Any],
) -> str:
    env = environment_info()
    counts = {s: sum(v.values()) for s, v in data["counts"].items()}
    lines = [
        f"# landfuse report: {dataset}",
        "",
        f"Test scores over {counts['test']} official test pixels; checkpoints selected on {counts['val']} "
        f"validation pixels carved from the {counts['train'] + counts['val']} official training pixels.",
        "",
        markdown_table(rows),
        "Per-class accuracies: `per_class.csv`; figures: `figures/`.",
        "",
        "![maps](figures/maps.png)",
        "",
        "## GAN augmentation (trained on the training split only)",
        "",
        "- mean spectral angle, generated vs real class means (degrees): "
        + ", ".join(f"{m} {a:.2f}" for m, a in quality.get("mean_spectral_angle_deg", {}).items()),
        f"- train on synthetic, test on real validation: {quality['tstr_val_accuracy'] * 100:.2f}% "
        f"(train on real: {quality['trtr_val_accuracy'] * 100:.2f}%)",
        "",
        "## Data",
        "",
        f"- patch store sha256: `{data['sha256']}` ({data['files']} files, {data['bytes'] / 1e6:.1f} MB)",
        *_data_lines(coreg),
        "",
        "## Provenance",
        "",
        f"- landfuse {env['landfuse']}, git commit `{env['git_commit']}`, Python {env['python']}",
        "- " + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v),
        "",
    ]
    return "\n".join(lines)


def write_index(out: Path, metrics_files: list[Path]) -> list[dict[str, Any]]:
    """The evaluated runs, in pipeline order: run folder, experiment, seed and headline test scores."""
    runs = []
    for path in metrics_files:
        m = json.loads(path.read_text())
        runs.append(
            {
                "run_dir": path.parent.as_posix(),
                "experiment": m["experiment"],
                "seed": m["seed"],
                "test_oa": m["test"]["oa"],
                "test_aa": m["test"]["aa"],
                "test_kappa": m["test"]["kappa"],
            }
        )
    write_json(out, {"runs": runs})
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    index = sub.add_parser("index", help="list the evaluated runs")
    index.add_argument("--out", required=True, type=Path)
    index.add_argument("metrics", nargs="+", type=Path)
    build = sub.add_parser("build", help="write results/<dataset>/all")
    build.add_argument("--dataset", required=True)
    build.add_argument("--results", required=True, type=Path)
    build.add_argument("--index", required=True, type=Path)
    build.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "index":
        write_index(args.out, args.metrics)
    else:
        runs = json.loads(args.index.read_text())["runs"]
        build_report(args.dataset, args.results, [Path(r["run_dir"]) for r in runs], args.out)


if __name__ == "__main__":
    main()
