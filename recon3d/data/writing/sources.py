"""Mesh sources: turn a folder or file into a sorted list of work items (one input shape -> one sample).

Layouts:
    folder      <root>/<category>/**/<name>.{obj,off,ply,stl,glb,gltf,binvox}   (files directly in root: category
                "uncategorized")
    shapenet    <root>/<synset>/<id>/model.obj (v1) or <root>/<synset>/<id>/models/model_normalized.obj (v2)
    modelnet    <root>/<class>/{train,test}/<name>.off (Z-up; its split is kept, val is carved out of train)
    binvox      like folder, .binvox files only
    imnet_hdf5  an IM-NET .hdf5 file (or a folder of them) with voxels, points_*/values_* and optional pixels; keys
                from the companion <stem>.txt (lines "synset/id") when present
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import h5py
import numpy as np

from recon3d.config import SourceConfig
from recon3d.data.schema import SPLITS, key_hash, make_key, split_by_hash
from recon3d.data.writing import imnet
from recon3d.data.writing.formats import MESH_EXTENSIONS
from recon3d.files import file_sha256

# ShapeNetCore synset ids (WordNet offsets) and their category names.
SHAPENET_SYNSETS = {
    "02691156": "airplane", "02747177": "trash_bin", "02773838": "bag", "02801938": "basket",
    "02808440": "bathtub", "02818832": "bed", "02828884": "bench", "02843684": "birdhouse",
    "02871439": "bookshelf", "02876657": "bottle", "02880940": "bowl", "02924116": "bus",
    "02933112": "cabinet", "02942699": "camera", "02946921": "can", "02954340": "cap", "02958343": "car",
    "02992529": "cellphone", "03001627": "chair", "03046257": "clock", "03085013": "keyboard",
    "03207941": "dishwasher", "03211117": "display", "03261776": "earphone", "03325088": "faucet",
    "03337140": "file_cabinet", "03467517": "guitar", "03513137": "helmet", "03593526": "jar",
    "03624134": "knife", "03636649": "lamp", "03642806": "laptop", "03691459": "loudspeaker",
    "03710193": "mailbox", "03759954": "microphone", "03761084": "microwave", "03790512": "motorcycle",
    "03797390": "mug", "03928116": "piano", "03938244": "pillow", "03948459": "pistol", "03991062": "pot",
    "04004475": "printer", "04074963": "remote", "04090263": "rifle", "04099429": "rocket",
    "04225987": "skateboard", "04256520": "sofa", "04330267": "stove", "04379243": "table",
    "04401088": "telephone", "04460130": "tower", "04468005": "train", "04530566": "watercraft",
    "04554684": "washer",
}

HDF5_EXTENSIONS = (".hdf5", ".h5")


@dataclass(frozen=True)
class Item:
    """One unit of work: an input shape that becomes one sample."""

    key: str  # <category>/<shape_id>, key-safe
    path: str  # input file, relative to the source root (the root itself for a single hdf5 file)
    kind: str  # mesh | binvox | imnet_row
    split: Optional[str] = None  # the source's own split, if it has one
    row: int = -1  # row of an hdf5 file
    up: str = "+y"
    front: str = "-z"
    front_from: str = "assumed"  # assumed (the layout's convention) | source.front_axis | source.front_by_category
    point_grid: str = ""  # IM-NET rows: the file's point layout, resolution | 256 (imnet.py)

    @property
    def category(self) -> str:
        return self.key.split("/", 1)[0]


Reject = dict  # {"path": ..., "key": ..., "reason": ...}


def detect_kind(root: Path) -> str:
    """Guess the layout of `root` (see the module docstring)."""
    if root.is_file():
        return "imnet_hdf5" if root.suffix.lower() in HDF5_EXTENSIONS else "folder"
    subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if subdirs and all(p.name.isdigit() and len(p.name) == 8 for p in subdirs):
        return "shapenet"
    if subdirs and any((p / "train").is_dir() or (p / "test").is_dir() for p in subdirs):
        return "modelnet"
    if root.is_dir() and any(p.suffix.lower() in HDF5_EXTENSIONS for p in root.iterdir() if p.is_file()):
        return "imnet_hdf5"
    return "folder"


def _walk(root: Path, odd: List[Tuple[Path, str]]):
    """Every file (and dangling link) below root, sorted, without following directory links; the folders that look
    like inputs (named like a mesh file) or are links to folders go to `odd` with the reason, so that every path
    that could be an input gets a sample or a reject."""
    stack = [Path(root)]  # a loop, not recursion: Python 3.11's os.walk recurses (a 1,200-deep tree overflowed it)
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            odd.append((folder, f"cannot list this folder ({err.strerror})"))
            continue
        folders = []
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                folders.append(path)
                if path.suffix.lower() in MESH_EXTENSIONS + (".binvox",):
                    odd.append((path, f"a folder named like a {path.suffix} file, not a file"))
            elif entry.is_symlink() and path.is_dir():
                odd.append((path, "a link to a folder: not followed (give its target as the root, or copy it)"))
            else:
                yield path
        stack.extend(reversed(folders))


def _dedupe(candidates: List[Tuple[str, Item]]) -> Tuple[List[Item], List[Reject]]:
    """Keep the first item per key in path order; later ones are rejected naming the first."""
    seen, items, rejects = {}, [], []
    for _, item in sorted(candidates, key=lambda c: c[0]):
        if item.key in seen:
            rejects.append({"path": item.path, "key": item.key,
                            "reason": f"duplicate shape id {item.key!r}: already taken by {seen[item.key]}"})
            continue
        seen[item.key] = item.path
        items.append(item)
    return items, rejects


def _folder(root: Path, cfg: SourceConfig, only_binvox: bool) -> Tuple[List[Item], List[Reject]]:
    exts = (".binvox",) if only_binvox else MESH_EXTENSIONS + (".binvox",)
    up = cfg.up_axis if cfg.up_axis != "auto" else "+y"
    front = cfg.front_axis if cfg.front_axis != "auto" else "-z"
    candidates, odd = [], []
    for path in _walk(root, odd):
        if path.suffix.lower() not in exts:
            continue
        rel = path.relative_to(root)
        parts = rel.parts
        category = parts[0] if len(parts) > 1 else "uncategorized"
        shape_id = "/".join(parts[1:])[: -len(path.suffix)] if len(parts) > 1 else path.stem
        kind = "binvox" if path.suffix.lower() == ".binvox" else "mesh"
        item = Item(make_key(category, shape_id), rel.as_posix(), kind, None, -1, up, front)
        candidates.append((rel.as_posix(), item))
    items, rejects = _dedupe(candidates)
    return items, rejects + [{"path": p.relative_to(root).as_posix(), "key": "", "reason": why} for p, why in odd]


def _shapenet(root: Path, cfg: SourceConfig) -> Tuple[List[Item], List[Reject]]:
    up = cfg.up_axis if cfg.up_axis != "auto" else "+y"
    front = cfg.front_axis if cfg.front_axis != "auto" else "-z"
    candidates, rejects = [], []
    for synset in sorted(p for p in root.iterdir() if p.is_dir()):
        category = SHAPENET_SYNSETS.get(synset.name, synset.name)
        for shape in sorted(p for p in synset.iterdir() if p.is_dir()):
            for rel in ("model.obj", "models/model_normalized.obj"):
                if (shape / rel).exists() or (shape / rel).is_symlink():
                    path = (shape / rel).relative_to(root).as_posix()
                    candidates.append((path, Item(make_key(category, shape.name), path, "mesh", None, -1, up, front)))
                    break
            else:
                rejects.append({"path": shape.relative_to(root).as_posix(), "key": make_key(category, shape.name),
                                "reason": "no model.obj (v1) or models/model_normalized.obj (v2) in this folder"})
    items, dupes = _dedupe(candidates)
    return items, rejects + dupes


def _modelnet(root: Path, cfg: SourceConfig) -> Tuple[List[Item], List[Reject]]:
    up = cfg.up_axis if cfg.up_axis != "auto" else "+z"
    front = cfg.front_axis if cfg.front_axis != "auto" else "-y"
    candidates = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        for split in ("train", "test"):
            for path in sorted((cls / split).glob("*")) if (cls / split).is_dir() else []:
                if path.suffix.lower() != ".off":
                    continue
                rel = path.relative_to(root).as_posix()
                candidates.append((rel, Item(make_key(cls.name, path.stem), rel, "mesh", split, -1, up, front)))
    return _dedupe(candidates)


def _imnet(root: Path, cfg: SourceConfig) -> Tuple[List[Item], List[Reject]]:
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.suffix.lower() in HDF5_EXTENSIONS)
    candidates, rejects, layouts = [], [], {}
    for file in files:
        rel = file.name
        try:
            with h5py.File(file, "r") as h5:
                if "voxels" not in h5:
                    raise KeyError("voxels")
                rows = int(h5["voxels"].shape[0])
                layouts[rel] = imnet.file_layout(h5, rel, cfg.hdf5_point_grid)
        except KeyError as err:
            rejects.append({"path": rel, "key": "", "reason": f"hdf5 is missing dataset {err.args[0]!r}"})
            continue
        except OSError as err:
            rejects.append({"path": rel, "key": "", "reason": f"cannot open hdf5: {str(err).splitlines()[0]}"})
            continue
        names = _imnet_names(file, rows)
        lowered = file.stem.lower()
        split = next((s for s in ("train", "test", "val") if s in lowered), None)
        for row in range(rows):
            synset, _, shape_id = names[row].rpartition("/")
            category = SHAPENET_SYNSETS.get(synset, synset or file.stem)
            item = Item(make_key(category, shape_id), rel, "imnet_row", split, row, point_grid=layouts[rel])
            candidates.append((f"{rel}:{row:09d}", item))
    if len(set(layouts.values())) > 1:
        named = {layout: next(f for f, value in layouts.items() if value == layout) for layout in layouts.values()}
        raise ValueError(f"IM-NET files of both point layouts in one source ({named['resolution']}: cell indices "
                         f"of each set's own grid; {named['256']}: 256^3 coordinates); build them separately")
    items, dupes = _dedupe(candidates)
    return items, rejects + dupes


def _imnet_names(file: Path, rows: int) -> List[str]:
    for companion in (file.with_suffix(".txt"), file.with_name(file.stem + "_obj_list.txt")):
        if companion.is_file():
            names = [line.strip() for line in companion.read_text().splitlines() if line.strip()]
            if len(names) == rows:
                return names
    return [f"{file.stem}/{row:06d}" for row in range(rows)]


def discover(cfg: SourceConfig) -> Tuple[List[Item], List[Reject], str]:
    """Items (sorted by key) and discovery-time rejects for a source, and the layout used.

    Raises:
        FileNotFoundError: the root does not exist.
    """
    root = Path(cfg.root)
    if not root.exists():
        raise FileNotFoundError(f"source.root={cfg.root!r} does not exist")
    kind = detect_kind(root) if cfg.kind == "auto" else cfg.kind
    finder = {"folder": lambda: _folder(root, cfg, False), "binvox": lambda: _folder(root, cfg, True),
              "shapenet": lambda: _shapenet(root, cfg), "modelnet": lambda: _modelnet(root, cfg),
              "imnet_hdf5": lambda: _imnet(root, cfg)}[kind]
    items, rejects = finder()
    if cfg.test_list:
        items = with_test_list(items, cfg.test_list)
    if cfg.categories:
        wanted = {make_key(c, "x").split("/")[0] for c in cfg.categories}
        items = [item for item in items if item.category in wanted]
    if cfg.limit_per_category:
        counts, kept = {}, []
        for item in sorted(items, key=lambda i: i.key):
            counts[item.category] = counts.get(item.category, 0) + 1
            if counts[item.category] <= cfg.limit_per_category:
                kept.append(item)
        items = kept
    return sorted((_with_front(item, cfg) for item in items), key=lambda i: i.key), rejects, kind


def with_test_list(items: List[Item], path: str | Path) -> List[Item]:
    """The items with their split from a list of test shapes (a published benchmark's, such as IM-NET's 13-category
    test list): a shape it names goes to test, every other one to train (val is then carved out of train). Lines
    name a shape by its id, with anything before the last "/" (a synset or category) ignored; blank lines and
    lines starting with # are skipped.

    Raises:
        FileNotFoundError: the list is missing.
        ValueError: it names no shape of the source (naming the file and a first id).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"source.test_list={str(path)!r}: no such file")
    lines = [line.strip() for line in path.read_text().splitlines()]
    test = {line.rstrip("/").rsplit("/", 1)[-1] for line in lines if line and not line.startswith("#")}
    found = [item for item in items if item.key.split("/", 1)[1] in test]
    if test and not found:
        raise ValueError(f"source.test_list={str(path)!r} names none of the source's shapes (e.g. "
                         f"{sorted(test)[0]!r}; shapes are named like {items[0].key.split('/', 1)[1]!r})"
                         if items else f"source.test_list={str(path)!r}: the source has no shapes")
    chosen = {item.key for item in found}
    return [dataclasses.replace(item, split="test" if item.key in chosen else "train") for item in items]


def _with_front(item: Item, cfg: SourceConfig) -> Item:
    """The item with its front axis from source.front_by_category, else source.front_axis, and where it came from."""
    if item.kind == "imnet_row":
        return item  # IM-NET's rows are already in the method's frame
    if item.category in cfg.front_by_category:
        front = cfg.front_by_category[item.category]
        return dataclasses.replace(item, front=front, front_from="source.front_by_category")
    return dataclasses.replace(item, front_from="source.front_axis") if cfg.front_axis != "auto" else item


def assign_split(item: Item, fractions) -> str:
    """The source's own split where it has one (val carved out of train by hash), else the key's hash."""
    if item.split in ("val", "test"):
        return item.split
    if item.split == "train":
        train, val = fractions[0], fractions[1]
        share = val / (train + val) if train + val > 0 else 0.0
        return "val" if split_by_hash(item.key, (1 - share, share, 0.0)) == "val" else "train"
    return split_by_hash(item.key, fractions)


def assign_splits(items: Iterable[Item], fractions, by: str = "hash") -> Dict[str, str]:
    """{key: split} of every item.

    by="hash": each key on its own (assign_split): a key keeps its split whatever else is added, but a small set
    comes out lumpy (160 shapes at 0.7/0.1/0.2 gave a val split of 7 shapes and no chair or car in it).
    by="category": within each category, the items ranked by their key's hash are cut at the fractions (rounded), so
    every category is split in the same proportions; the source's own val/test stay, and its train items are cut
    into train and val the same way. Adding shapes to a category can move a few of its items across a boundary.
    """
    if by == "hash":
        return {item.key: assign_split(item, fractions) for item in items}
    out, groups = {}, {}
    for item in items:
        if item.split in ("val", "test"):
            out[item.key] = item.split
        else:
            groups.setdefault((item.category, item.split == "train"), []).append(item)
    for (_, from_train), group in groups.items():
        counts = split_counts(len(group), (fractions[0], fractions[1], 0.0) if from_train else fractions)
        group.sort(key=lambda i: (key_hash(i.key), i.key))
        for rank, item in enumerate(group):
            out[item.key] = SPLITS[int(np.searchsorted(np.cumsum(counts), rank, side="right"))]
    return out


def identical_inputs(items: Iterable[Item], root: Path) -> List[List[Item]]:
    """Groups of two or more file items whose bytes are identical (one mesh saved under several names or
    categories): only files of equal size are read and hashed."""
    by_size: Dict[int, List[Item]] = {}
    for item in items:
        if item.kind != "imnet_row":
            try:
                by_size.setdefault((root / item.path).stat().st_size, []).append(item)
            except OSError:
                continue  # a missing or unreadable file: its reject says so
    groups = []
    for same in (group for group in by_size.values() if len(group) > 1):
        by_hash: Dict[str, List[Item]] = {}
        for item in same:
            try:
                by_hash.setdefault(file_sha256(root / item.path), []).append(item)
            except OSError:
                continue
        groups += [group for group in by_hash.values() if len(group) > 1]
    return groups


def keep_together(splits: Dict[str, str], groups: Iterable[List[Item]]) -> Dict[str, str]:
    """Every group of identical inputs in one split, its first key's (in key order): a shape is never trained on
    under one name and tested under another."""
    for group in groups:
        first = min(group, key=lambda item: item.key)
        for item in group:
            splits[item.key] = splits[first.key]
    return splits


def split_counts(n: int, fractions) -> List[int]:
    """n items shared by the fractions: cumulative shares rounded half up (32 at 0.7/0.1/0.2: 22/4/6), and at least
    one item for each split with a positive fraction while there are enough items (3 at 0.8/0.1/0.1: 1/1/1)."""
    shares = np.asarray(fractions, dtype=float) / (sum(fractions) or 1.0)
    edges = np.floor(np.cumsum(shares) * n + 0.5 + 1e-9).astype(int).clip(0, n)
    edges[-1] = n
    counts = np.diff(edges, prepend=0)
    wanted = np.flatnonzero(shares > 0)
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] = 1
    return counts.tolist()
