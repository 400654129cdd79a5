"""Typed access to every params file, validated against ``workflow/schemas``.

``params/pipeline.yaml`` chooses what runs, ``params/datasets/<name>.yaml`` holds every fact about a
dataset and ``params/models/<name>.yaml`` every model hyper-parameter. Code asks this module and
never hard-codes a band count, class list or split size.

A dataset file may say ``twin_of: <base>``: it is then deep-merged over the base file, so a synthetic
twin inherits the real dataset's file names, classes and counts and overrides only what differs. The
base may itself be a twin (a small twin of the full twin of the real dataset).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import yaml

from stages.paths import params_dir, schema_path

PRESETS = ("quick", "paper")
ROLES = ("primary", "auxiliary")


class ParamsError(ValueError):
    """A params file is missing or does not match its schema."""


# --------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file. Check the name, or add the file under params/.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({err}).") from err
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, found {type(data).__name__}.")
    return data


def _with_defaults(validator_class: type) -> type:
    """A validator that also fills ``default:`` values in, as Snakemake's ``validate`` does."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


@cache
def _schema(name: str) -> dict[str, Any]:
    return yaml.safe_load(schema_path(name).read_text())


def validate(data: dict[str, Any], schema: str, source: Path | str) -> dict[str, Any]:
    """Validate ``data`` in place (filling defaults) and return it; errors name the file and field."""
    errors = sorted(_Validator(_schema(schema)).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        lines = [f"  - {'/'.join(map(str, e.path)) or '<top>'}: {e.message}" for e in errors[:10]]
        raise ParamsError(
            f"{source}: does not match workflow/schemas/{schema}.schema.yaml:\n" + "\n".join(lines)
        )
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else in ``override`` replaces ``base``."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassInfo:
    id: int
    key: str
    name: str
    color: tuple[int, int, int]
    train: int | None
    test: int | None


@dataclass(frozen=True)
class Modality:
    name: str
    role: str
    file: str
    format: str
    bands: int
    band_names: tuple[str, ...]
    wavelengths_nm: tuple[float, ...] | None
    dtype: str | None
    units: str | None
    resampling: str
    key: str | None
    layout: str | None = None  # .npy/.mat arrays: "chw" (bands first) or "hwc" (bands last)
    # ``files:`` rasters on one grid stacked band-wise into this modality (Houston 2018's LiDAR
    # products, one GeoTIFF each); empty when the modality is the one ``file``.
    stack: tuple[str, ...] = ()
    wavelengths_key: str | None = None  # .mat: where the file stores the band centres
    # A declared no-data value: a pixel has no data where any band (``nodata_rule: any_band``) or every
    # band (``all_bands``, e.g. a zero-filled border of a spectrum) equals it.
    nodata: float | None = None
    nodata_rule: str = "any_band"

    @property
    def paths(self) -> tuple[str, ...]:
        """The modality's file(s) inside ``data/raw/<name>``: the ``files:`` stack or the one ``file``."""
        return self.stack or (self.file,)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the pipeline knows about one dataset, from its params file."""

    name: str
    raw: dict[str, Any]
    path: Path
    # the params files merged under this one, nearest first (``twin_of`` and its own ``twin_of``)
    bases: tuple[str, ...] = ()

    # -- identity ---------------------------------------------------------------------------------
    @property
    def title(self) -> str:
        return self.raw["title"]

    @property
    def task(self) -> str:
        return self.raw["task"]

    @property
    def is_twin(self) -> bool:
        return self.raw["source"]["kind"] == "twin"

    @property
    def source(self) -> dict[str, Any]:
        return self.raw["source"]

    @property
    def twin(self) -> dict[str, Any] | None:
        return self.raw.get("twin")

    # -- geometry and modalities ------------------------------------------------------------------
    @property
    def is_custom(self) -> bool:
        """Your own data (``source.kind: custom``), copied in from the ``path:`` entries."""
        return self.raw["source"]["kind"] == "custom"

    @property
    def custom_sources(self) -> dict[str, Path]:
        """Local data: each file's name in ``data/raw/<name>`` -> its source path (absolute)."""
        return {k: Path(v) for k, v in self.raw.get("custom_sources", {}).items()}

    @property
    def declared_shape(self) -> tuple[int, int] | None:
        """``(grid.height, grid.width)``, or None where custom data leaves them to the reference file."""
        grid = self.raw["grid"]
        return (grid["height"], grid["width"]) if "height" in grid and "width" in grid else None

    @property
    def height(self) -> int:
        return self._grid_size("height")

    @property
    def width(self) -> int:
        return self._grid_size("width")

    def _grid_size(self, key: str) -> int:
        if key not in self.raw["grid"]:
            raise ParamsError(
                f"{self.path}: grid.{key} is not set; for custom data it is taken from the reference "
                "modality by the coregister stage (read results/<name>/coreg/grid.json)."
            )
        return self.raw["grid"][key]

    @property
    def grid(self) -> dict[str, Any]:
        return self.raw["grid"]

    @property
    def patch_size(self) -> int:
        if "patch_size" not in self.raw:
            raise ParamsError(
                f"{self.path}: a {self.task} dataset has no patch_size; patch classifiers need one."
            )
        return self.raw["patch_size"]

    @property
    def tiles(self) -> dict[str, Any]:
        """Tile datasets: ``size``, ``sets`` (path templates), ``splits`` and real ``counts``."""
        if self.task != "tiles":
            raise ParamsError(f"{self.path}: `{self.name}` is a {self.task} dataset, not a tile dataset.")
        return self.raw["tiles"]

    def tile_path(self, tile_set: str, kind: str, tile_id: int | str) -> str:
        """Relative path of one tile file: ``kind`` is a modality's ``file`` token or the label token."""
        return self.tiles["sets"][tile_set].format(kind=kind, id=tile_id)

    def tile_counts(self) -> dict[str, int] | None:
        """Tiles per set: the twin's own counts if it is a twin of a tile dataset, else the real ones."""
        twin = self.twin or {}
        return twin.get("tiles") or self.tiles.get("counts")

    @property
    def modalities(self) -> dict[str, Modality]:
        out = {}
        for name, m in self.raw["modalities"].items():
            wl = m.get("wavelengths_nm")
            names = m.get("band_names") or (
                [f"{name}_{w:g}nm" for w in wl] if wl else [f"{name}_{i + 1}" for i in range(m["bands"])]
            )
            out[name] = Modality(
                name=name,
                role=m["role"],
                file=m.get("file") or m["files"][0],
                format=m["format"],
                bands=m["bands"],
                band_names=tuple(names),
                wavelengths_nm=tuple(wl) if wl else None,
                dtype=m.get("dtype"),
                units=m.get("units"),
                # bilinear for continuous bands; the schema allows others per modality
                resampling=m.get("resampling", "bilinear"),
                key=m.get("key"),
                layout=m.get("layout"),
                nodata=m.get("nodata"),
                nodata_rule=m.get("nodata_rule", "any_band"),
                stack=tuple(m.get("files", ())),
                wavelengths_key=m.get("wavelengths_key"),
            )
        return out

    @property
    def reference_modality(self) -> str:
        """The modality the grid is taken from, or ``labels`` (the train label raster's own grid)."""
        return self.raw["grid"]["reference"]

    @property
    def registration_reference(self) -> str:
        """The modality residual shifts are measured against: the reference, else the primary one."""
        ref = self.reference_modality
        return ref if ref in self.raw["modalities"] else self.modalities_with_role("primary")[0]

    def modalities_with_role(self, role: str) -> list[str]:
        return [n for n, m in self.modalities.items() if m.role == role]

    # -- labels and classes -----------------------------------------------------------------------
    @property
    def labels(self) -> dict[str, Any]:
        return self.raw["labels"]

    def label_key(self, split: str) -> str:
        """The ``.mat`` variable of the ``split`` labels: ``labels.keys.<split>`` (train and test maps in
        files of their own, e.g. ``TrainImage`` / ``TestImage``), else ``labels.key``, else the split."""
        keys = self.labels.get("keys") or {}
        return keys.get(split) or self.labels.get("key", split)

    def label_lut(self) -> np.ndarray | None:
        """``labels.remap`` (raw file value -> class id, 0 = no label) as a 256-entry lookup table.

        For label files whose codes are not the class ids (Hunan: raw land-cover codes 0..11 and 255
        for no data). Values the remap does not list map to 255, which no class id may be, so a stray
        code fails the label check instead of silently becoming a class. ``None`` without a remap.
        """
        remap = self.labels.get("remap")
        if not remap:
            return None
        lut = np.full(256, 255, dtype=np.uint8)
        for raw, cls in remap.items():
            lut[int(raw)] = int(cls)
        return lut

    @property
    def classes(self) -> list[ClassInfo]:
        return [
            ClassInfo(c["id"], c["key"], c["name"], tuple(c["color"]), c.get("train"), c.get("test"))
            for c in self.raw["classes"]
        ]

    @property
    def n_classes(self) -> int:
        return len(self.raw["classes"])

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.raw["classes"]]

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return [tuple(c["color"]) for c in self.raw["classes"]]

    def expected_counts(self, split: str) -> dict[int, int] | None:
        """Per-class sample counts of ``split`` (``train`` or ``test``), scaled for a small twin.

        A twin of a dataset whose real counts are unknown lists its own in ``twin.<split>_counts``
        (class key -> count at full size). ``None`` when neither lists them.
        """
        twin = self.twin or {}
        twin_counts = twin.get(f"{split}_counts") or {}
        if any(c.get(split) is None and c["key"] not in twin_counts for c in self.raw["classes"]):
            return None
        scale = twin.get("count_scale", 1.0)
        floor = twin.get(f"min_{split}", 1)
        counts = {}
        for c in self.raw["classes"]:
            n = c[split] if c.get(split) is not None else twin_counts[c["key"]]
            counts[c["id"]] = n if scale == 1.0 else max(floor, math.floor(n * scale + 0.5))
        return counts


def _dataset_file(name: str, root: Path | None) -> Path:
    return (root or params_dir()) / "datasets" / f"{name}.yaml"


def load_dataset(name: str, root: Path | None = None) -> DatasetSpec:
    """Read ``params/datasets/<name>.yaml``, merge it over its ``twin_of`` base and validate it."""
    path = _dataset_file(name, root)
    data = load_yaml(path)
    if data.get("name") != name:
        raise ParamsError(f"{path}: `name: {data.get('name')}` must equal the file name `{name}`.")
    bases: list[str] = []
    base_name = data.get("twin_of")
    while base_name:
        if base_name in bases or base_name == name:
            raise ParamsError(f"{path}: `twin_of` loops through {base_name}.")
        bases.append(base_name)
        base = load_yaml(_dataset_file(base_name, root))
        base_name = base.pop("twin_of", None)
        data = deep_merge(base, data)
    if data.get("source", {}).get("kind") == "custom":
        _fill_custom_classes(data)
    validate(data, "dataset", path)
    _check_dataset(data, path)
    if data["source"]["kind"] == "custom":
        _resolve_custom_files(data, path)
    return DatasetSpec(name=name, raw=data, path=path, bases=tuple(bases))


def default_palette(n: int) -> list[list[int]]:
    """``n`` distinct, deterministic colours: hues stepped by the golden ratio, alternating lightness."""
    import colorsys

    out = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hls_to_rgb(hue, 0.45 if i % 2 else 0.6, 0.75)
        out.append([round(r * 255), round(g * 255), round(b * 255)])
    return out


def _slug(text: str) -> str:
    return "_".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split()) or "class"


def _fill_custom_classes(data: dict[str, Any]) -> None:
    """Local data may list classes by name only: ids 1..K in order, keys from names, default colours."""
    classes = data.get("classes")
    if not isinstance(classes, list):
        return  # the schema reports it
    classes = [{"name": c} if isinstance(c, str) else c for c in classes]
    palette = data.get("palette") or []
    defaults = default_palette(len(classes))
    for i, c in enumerate(classes):
        if not isinstance(c, dict):
            continue
        c.setdefault("id", i + 1)
        if "name" in c:
            c.setdefault("key", _slug(str(c["name"])))
        c.setdefault("color", list(palette[i]) if i < len(palette) else defaults[i])
    data["classes"] = classes


LOCAL_LABEL_NAMES = {"train": "labels_train", "test": "labels_test"}


def _custom_path(value: str, path: Path) -> Path:
    """A ``path:`` of custom data: absolute, or relative to the project root that holds ``params/``."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (path.resolve().parent.parent.parent / p)


def _resolve_custom_files(data: dict[str, Any], path: Path) -> None:
    """Give every custom file a stable name in ``data/raw/<name>`` and remember where it comes from."""
    sources: dict[str, str] = {}
    for name, m in data["modalities"].items():
        if "path" not in m:
            raise ParamsError(
                f"{path}: modalities.{name} needs `path:` (the file) for `source.kind: custom`."
            )
        src = _custom_path(m["path"], path)
        m["file"] = name + "".join(src.suffixes[-1:])
        sources[m["file"]] = str(src)
        if m["format"] == "envi":  # the header travels with the data, named as GDAL looks for it
            headers = [src.with_suffix(".hdr"), src.with_name(src.name + ".hdr")]
            sources[f"{name}.hdr"] = str(next((h for h in headers if h.is_file()), headers[0]))
    labels = data["labels"]
    if labels["format"] not in ("geotiff", "npy", "mat"):
        raise ParamsError(
            f"{path}: labels.format {labels['format']!r} is not supported for custom data; use geotiff, "
            "npy or mat (a label raster on the reference grid)."
        )
    for split, stable in LOCAL_LABEL_NAMES.items():
        src = _custom_path(labels[split], path)
        labels[split] = stable + "".join(src.suffixes[-1:])
        if labels[split] in sources:
            raise ParamsError(f"{path}: a modality named `{stable}` clashes with the label files; rename it.")
        sources[labels[split]] = str(src)
    data["custom_sources"] = sources


def _check_dataset(data: dict[str, Any], path: Path) -> None:
    """Cross-field rules a JSON schema cannot express."""
    mods = data["modalities"]
    custom = data["source"]["kind"] == "custom"
    if not custom and not {"height", "width"} <= set(data["grid"]):
        raise ParamsError(
            f"{path}: grid.height and grid.width are required (only custom data may omit them)."
        )
    if custom and data["task"] != "scene":
        raise ParamsError(f"{path}: custom data (`source.kind: custom`) is one scene; set `task: scene`.")
    reference = data["grid"]["reference"]
    if reference == "labels":
        if data["labels"]["format"] != "geotiff" or data["task"] != "scene":
            raise ParamsError(
                f"{path}: grid.reference `labels` takes the grid of a georeferenced label GeoTIFF "
                "(labels.format: geotiff, task: scene)."
            )
    elif reference not in mods:
        raise ParamsError(f"{path}: grid.reference `{reference}` is neither a modality nor `labels`.")
    if not any(m["role"] == "primary" for m in mods.values()):
        raise ParamsError(f"{path}: at least one modality needs `role: primary`.")
    for name, m in mods.items():
        if m["format"] == "npy" and m["bands"] > 1 and "layout" not in m:
            raise ParamsError(
                f"{path}: modalities.{name} is a {m['bands']}-band .npy; say its axis order with "
                "`layout: chw` (bands first) or `layout: hwc` (bands last)."
            )
        if m["format"] == "mat" and custom and "key" not in m:
            raise ParamsError(f"{path}: modalities.{name} is a .mat file; name its variable with `key:`.")
        if "file" not in m and "files" not in m and not custom:
            raise ParamsError(f"{path}: modalities.{name} needs `file:` (its path inside data/raw/<name>).")
        if "files" in m and ("file" in m or m["format"] != "geotiff" or len(m["files"]) != m["bands"]):
            raise ParamsError(
                f"{path}: modalities.{name}.files stacks single-band GeoTIFFs, one per band: give "
                f"{m['bands']} of them (format: geotiff) and no `file:`."
            )
        if "nodata_rule" in m and "nodata" not in m:
            raise ParamsError(f"{path}: modalities.{name}.nodata_rule needs `nodata:` (the no-data value).")
        for key in ("band_names", "wavelengths_nm"):
            if key in m and len(m[key]) != m["bands"]:
                raise ParamsError(
                    f"{path}: modalities.{name}.{key} has {len(m[key])} entries for {m['bands']} bands."
                )
    ids = [c["id"] for c in data["classes"]]
    if len(set(ids)) != len(ids):
        raise ParamsError(f"{path}: class ids must be unique, got {ids}.")
    if data["labels"].get("unlabelled", 0) in ids:
        raise ParamsError(f"{path}: the unlabelled value is also a class id.")
    remap = data["labels"].get("remap")
    if remap is not None:
        bad = {k: v for k, v in remap.items() if not 0 <= int(k) <= 255 or (v != 0 and v not in ids)}
        if bad:
            raise ParamsError(
                f"{path}: labels.remap maps raw values 0..255 to class ids or 0 (no label); bad: {bad}."
            )
        if 255 in ids:
            raise ParamsError(
                f"{path}: with labels.remap, 255 marks unmapped raw values; no class may use it."
            )
    if "patch_size" in data and data["patch_size"] % 2 == 0:
        raise ParamsError(f"{path}: patch_size must be odd so a patch has a centre pixel.")
    if data["task"] == "tiles":
        tiles = data["tiles"]
        for split, sets in tiles["splits"].items():
            missing = [s for s in sets if s not in tiles["sets"]]
            if missing:
                raise ParamsError(f"{path}: tiles.splits.{split} names unknown sets {missing}.")
    border = (data.get("twin") or {}).get("nodata_border")
    for name in (border or {}).get("modalities", []):
        if "nodata" not in mods.get(name, {}):
            raise ParamsError(f"{path}: twin.nodata_border names `{name}`, which declares no `nodata:`.")
    if data["source"]["kind"] == "twin" and "twin" not in data:
        raise ParamsError(f"{path}: `source.kind: twin` needs a `twin:` section.")


def list_datasets(root: Path | None = None) -> list[str]:
    return sorted(p.stem for p in ((root or params_dir()) / "datasets").glob("*.yaml"))


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    kind: str
    preset: str
    architecture: dict[str, Any]
    training: dict[str, Any]
    raw: dict[str, Any]


def load_model(name: str, preset: str, root: Path | None = None) -> ModelSpec:
    """Read ``params/models/<name>.yaml`` and pick one preset (``quick`` or ``paper``)."""
    path = (root or params_dir()) / "models" / f"{name}.yaml"
    data = validate(load_yaml(path), "model", path)
    if data["name"] != name:
        raise ParamsError(f"{path}: `name: {data['name']}` must equal the file name `{name}`.")
    if preset not in data["presets"]:
        raise ParamsError(f"{path}: no preset `{preset}`; choose one of {sorted(data['presets'])}.")
    chosen = data["presets"][preset]
    return ModelSpec(
        name=name,
        title=data["title"],
        kind=data["kind"],
        preset=preset,
        architecture=dict(chosen["architecture"]),
        training=dict(chosen["training"]),
        raw=data,
    )


# --------------------------------------------------------------------------------------------------
# Pipeline and experiments
# --------------------------------------------------------------------------------------------------


def load_pipeline(path: Path | None = None) -> dict[str, Any]:
    path = path or params_dir() / "pipeline.yaml"
    return validate(load_yaml(path), "pipeline", path)


@dataclass(frozen=True)
class Experiment:
    """One trainable configuration: a model, the modalities it sees, a preset, the GAN switch and
    overrides of the preset's hyper-parameters (e.g. an ablation switch)."""

    name: str
    model: str
    modalities: tuple[str, ...]
    preset: str
    augmented: bool | None
    architecture: dict[str, Any] = field(default_factory=dict, compare=False)
    training: dict[str, Any] = field(default_factory=dict, compare=False)

    def as_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "modalities": list(self.modalities),
            "preset": self.preset,
            "augmented": self.augmented,
            "architecture": self.architecture,
            "training": self.training,
        }


def model_for(experiment: Experiment, root: Path | None = None) -> ModelSpec:
    """The experiment's model preset with its overrides applied (the one place they are applied)."""
    spec = load_model(experiment.model, experiment.preset, root)
    training = deep_merge(spec.training, experiment.training)
    if experiment.augmented is not None:
        training["use_augmented"] = experiment.augmented
    return ModelSpec(
        name=spec.name,
        title=spec.title,
        kind=spec.kind,
        preset=spec.preset,
        architecture=deep_merge(spec.architecture, experiment.architecture),
        training=training,
        raw=spec.raw,
    )


def resolve_modalities(requested: list[str] | None, dataset: DatasetSpec) -> tuple[str, ...]:
    """Expand roles (``primary``/``auxiliary``) into modality names, in the dataset's order."""
    available = list(dataset.modalities)
    if not requested:
        return tuple(available)
    chosen: set[str] = set()
    for item in requested:
        if item in ROLES:
            chosen.update(dataset.modalities_with_role(item))
        elif item in available:
            chosen.add(item)
        else:
            raise ParamsError(
                f"params/pipeline.yaml: experiment modality `{item}` is neither a role {ROLES} nor a "
                f"modality of {dataset.name} ({', '.join(available)})."
            )
    return tuple(n for n in available if n in chosen)


def resolve_experiments(
    pipeline: dict[str, Any], dataset: DatasetSpec, root: Path | None = None
) -> list[Experiment]:
    """The pipeline's experiments for one dataset, with modality roles resolved and names derived.

    Experiments listing ``datasets`` run only on those and their twins; patch classifiers are left out
    on tile datasets.

    A derived name is the model, then ``-<modalities>`` when not all are used, ``-gan`` when GAN
    patches are added and ``-<preset>`` when it differs from the pipeline preset.
    """
    out: list[Experiment] = []
    for entry in pipeline["experiments"]:
        if entry.get("datasets") and not {dataset.name, *dataset.bases} & set(entry["datasets"]):
            continue  # listed datasets match their twins too
        preset_name = entry.get("preset", pipeline["preset"])
        if (
            dataset.task == "tiles"
            and load_model(entry["model"], preset_name, root).kind == "patch_classifier"
        ):
            continue  # a patch classifier needs a label per patch centre: scene datasets only
        mods = resolve_modalities(entry.get("modalities"), dataset)
        preset = entry.get("preset", pipeline["preset"])
        augmented = entry.get("augmented")
        name = entry.get("name")
        overrides = {"architecture": entry.get("architecture", {}), "training": entry.get("training", {})}
        if not name and any(overrides.values()):
            raise ParamsError(
                f"params/pipeline.yaml: the {entry['model']} experiment overrides hyper-parameters; "
                "give it a `name:`."
            )
        if not name:
            name = entry["model"]
            if len(mods) < len(dataset.modalities):
                name += "-" + "+".join(mods)
            if augmented:
                name += "-gan"
            if preset != pipeline["preset"]:
                name += f"-{preset}"
        out.append(Experiment(name, entry["model"], mods, preset, augmented, **overrides))
    names = [e.name for e in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ParamsError(
            f"params/pipeline.yaml: experiments resolve to duplicate names {dupes}; set `name:`."
        )
    return out


def find_experiment(pipeline: dict[str, Any], dataset: DatasetSpec, name: str) -> Experiment:
    for exp in resolve_experiments(pipeline, dataset):
        if exp.name == name:
            return exp
    raise ParamsError(f"params/pipeline.yaml: no experiment named `{name}` for dataset {dataset.name}.")
