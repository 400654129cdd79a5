"""Stage ``twin``: generate a dataset's synthetic twin as the archives its download would fetch.

``python -m stages.twin --dataset houston2013-twin --out data/twins/houston2013-twin``

The output folder plays the dataset's web server: it holds the archives under their real names and
``twin-manifest.json`` with their sha256 (and their members'). The download stage serves this folder
on 127.0.0.1 and fetches it through the same HTTP code path as real data. ``_truth.npz`` keeps the
whole-scene class map, materials, DSM and shadow mask for diagnostics; it is not served as data.
Same params + same seed give byte-identical archives.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.config import DatasetSpec, load_dataset
from stages.datasets.twins import dfc20, houston2013, houston2018, hunan, mat_scene
from stages.datasets.twins.packaging import pack
from stages.io.atomic import atomic_dir, write_json
from stages.io.logs import setup_logging

log = logging.getLogger(__name__)

GENERATORS: dict[str, Callable[[DatasetSpec, Path], dict[str, Any]]] = {
    "houston2013": houston2013.generate,
    "houston2018": houston2018.generate,
    "dfc20": dfc20.generate,
    "hunan": hunan.generate,
    "mat_scene": mat_scene.generate,
}

MANIFEST = "twin-manifest.json"


def generate_twin(spec: DatasetSpec, out: Path) -> dict[str, Any]:
    """Generate, pack and checksum the twin of ``spec`` into ``out`` (atomically)."""
    if not spec.is_twin:
        raise ValueError(f"{spec.path}: `source.kind` is {spec.source['kind']!r}, not a twin.")
    name = spec.twin["generator"]
    if name not in GENERATORS:
        raise ValueError(f"{spec.path}: unknown twin generator {name!r}; known: {sorted(GENERATORS)}.")
    with atomic_dir(out) as tmp:
        files = tmp / "_files"
        files.mkdir()
        summary = GENERATORS[name](spec, files)
        manifest = pack(spec, files, tmp)
        (files / "_truth.npz").replace(tmp / "_truth.npz")
        manifest["summary"] = summary
        manifest["dataset"] = spec.name
        write_json(tmp / MANIFEST, manifest)
        for leftover in sorted(files.rglob("*"), reverse=True):
            leftover.unlink() if leftover.is_file() else leftover.rmdir()
        files.rmdir()
    log.info("twin %s: %s", spec.name, {k: manifest["archives"][k][:12] for k in manifest["archives"]})
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", required=True, help="a params/datasets/<name>.yaml with source.kind: twin"
    )
    parser.add_argument("--out", required=True, type=Path, help="the folder to serve, e.g. data/twins/<name>")
    parser.add_argument(
        "--params-root", type=Path, default=None, help="params/ folder (default: the project's)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    generate_twin(load_dataset(args.dataset, root=args.params_root), args.out)


if __name__ == "__main__":
    main()
