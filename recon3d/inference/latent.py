"""Working in the latent space of a trained autoencoder: generate shapes with the latent GAN (and measure them
against real shapes), interpolate between codes, and retrieve shapes by latent distance."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from recon3d.config import GeometryConfig
from recon3d.data import schema
from recon3d.data.loading.datamodule import iter_split
from recon3d.data.loading.latents import default_latents, read_all_latents
from recon3d.data.loading.shards import load_manifest
from recon3d.data.writing.formats import RejectError, load_mesh
from recon3d.data.writing.prepare import normalise_for, solid_for
from recon3d.geometry.lfd import lfd_distance, light_field_descriptor
from recon3d.geometry.metrics import coverage_and_mmd, nearest_references, pairwise_chamfer_l2
from recon3d.inference.autoencoder import extract_many, extract_mesh, load_autoencoder
from recon3d.inference.outputs import save_mesh, write_strip
from recon3d.inference.photo import prepare_photo
from recon3d.inference.splits import model_input
from recon3d.inference.tables import eval_name, need_shards, write_eval
from recon3d.stages import STAGES
from recon3d.tasks.checkpoints import load_checkpoint, load_with_autoencoder, read_checkpoint, stage_of
from recon3d.tasks.decoding import decoded_surfaces, inference_dtype

SAMPLES_PER_SHAPE = 5  # generated shapes per reference shape in evaluate(): COV grows with this ratio
TABLE_COLUMNS = ("shapes", "cov", "cov min", "cov max", "cov@1x", "mmd", "empty")
TABLE_NOTE = ("COV / MMD (Chamfer-L2 x1000) of generated shapes against the split's shapes, per category of the "
              "reference shapes; 'mean over shapes' is the whole reference set's COV/MMD. cov: with "
              f"{SAMPLES_PER_SHAPE} samples per reference shape, the mean over the disjoint draws of that many "
              "(cov min / max: their lowest and highest); cov@1x: with as many samples as reference shapes; "
              "empty: samples with no surface, over all draws. 'train shapes (ceiling)': training shapes through "
              "the autoencoder in place of samples, the same counts (what a GAN that reproduced its training set "
              "would score)")
GAN_SAMPLE = re.compile(r"^gan:(\d+)$")


def load_any(ckpt: str | Path, device: str = "cpu") -> Tuple[object, object]:
    """(autoencoder task, GAN task or None) from an autoencoder or a latent-GAN checkpoint (which names its
    autoencoder)."""
    row = stage_of(read_checkpoint(ckpt), str(ckpt))
    if row.name == "autoencoder":
        return load_autoencoder(ckpt, device), None
    gan, autoencoder = load_with_autoencoder(ckpt, device, expect="gan")
    return autoencoder, gan


@torch.no_grad()
def gan_codes(gan, seeds: Sequence[int]) -> torch.Tensor:
    """One generated code per seed (the same seed gives the same shape)."""
    return gan.codes_for_seeds(seeds)


@torch.no_grad()
def shape_codes(autoencoder, shard_dir: str | Path, keys: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The autoencoder's code of each sample key, encoded from the stored voxels.

    Raises:
        ValueError: a key is in no split of the shards.
    """
    wanted, found = set(keys), {}
    for split in schema.SPLITS:
        for batch in iter_split(shard_dir, split, 8):
            for i, key in enumerate(batch["key"]):
                if key in wanted:
                    found[key] = autoencoder.model.encoder(batch["voxels"][i:i + 1].to(autoencoder.device))[0]
            if len(found) == len(wanted):
                return found
    missing = sorted(wanted - set(found))
    raise ValueError(f"{shard_dir}: no sample {missing[0]!r} (keys look like 'chair/chair_001'; see shards summary)")


def interpolation_weights(steps: int) -> np.ndarray:
    """a_i for z_i = a_i z1 + (1 - a_i) z2, from 1 (z1) down to 0 (z2), `steps` values."""
    if steps < 2:
        raise ValueError("--steps must be >= 2 (the two endpoints)")
    return np.linspace(1.0, 0.0, steps)


def interpolate_codes(z1: torch.Tensor, z2: torch.Tensor, steps: int) -> torch.Tensor:
    weights = torch.as_tensor(interpolation_weights(steps), dtype=z1.dtype, device=z1.device)[:, None]
    return weights * z1[None] + (1 - weights) * z2[None]


def endpoint_codes(autoencoder, gan, endpoints: Sequence[str], shard_dir: str = "") -> List[torch.Tensor]:
    """Codes for endpoints given as sample keys (need --shards) or as gan:SEED (need a GAN checkpoint)."""
    codes: List[torch.Tensor] = []
    keys = [e for e in endpoints if not GAN_SAMPLE.match(e)]
    by_key = {}
    if keys:
        if not shard_dir:
            raise ValueError(f"{keys[0]!r} is a sample key: give --shards DIR to find it")
        by_key = shape_codes(autoencoder, shard_dir, keys)
    for endpoint in endpoints:
        match = GAN_SAMPLE.match(endpoint)
        if match:
            if gan is None:
                raise ValueError(f"{endpoint}: generated endpoints need a latent-GAN checkpoint as --ckpt")
            codes.append(gan_codes(gan, [int(match.group(1))])[0])
        else:
            codes.append(by_key[endpoint])
    return codes


@torch.no_grad()
def codes_to_meshes(autoencoder, codes: torch.Tensor, out_dir: Path, names: Sequence[str], *, resolution: int = 128,
                    fmt: str = "obj") -> List[dict]:
    """Extract and save one mesh per code; rows with the path and the mesh."""
    rows = []
    for name, (verts, faces, _) in zip(names, extract_many(autoencoder, codes, resolution)):
        path = save_mesh(Path(out_dir) / f"{name}.{fmt}", verts, faces)
        rows.append({"name": name, "path": str(path), "faces": len(faces), "mesh": (verts, faces)})
    return rows


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@torch.no_grad()
def mesh_code(autoencoder, path: str | Path, manifest: dict) -> Tuple[torch.Tensor, tuple]:
    """(z, (vertices, faces)) of a mesh file, voxelised exactly as the shards were (their geometry settings).

    Raises:
        ValueError: the file is not a usable mesh (naming it and why, as a shard build's reject would).
    """
    geo = GeometryConfig(**manifest["config"]["geometry"])
    try:
        mesh = load_mesh(path, geo.max_faces, geo.max_file_mb * 2**20)
    except RejectError as err:
        raise ValueError(f"{path}: {err}") from None
    verts = normalise_for(mesh.vertices, mesh.faces, geo).apply(mesh.vertices)
    solid = solid_for(verts, mesh.faces, geo)
    voxels = torch.as_tensor(solid.coarse, dtype=torch.float32)[None, None].to(autoencoder.device)
    return autoencoder.model.encoder(voxels)[0], (verts, mesh.faces)


@torch.no_grad()
def search(query: str, ckpt: str | Path, shard_dir: str | Path, *, k: int = 5, svr_ckpt: str = "",
           rerank_lfd: int = 0, resolution: int = 64, device: str = "cpu") -> dict:
    """The k nearest shapes of the shards to `query` (a shape key, a mesh file, or an image with svr_ckpt) by
    Euclidean distance between codes; with rerank_lfd = N, the N nearest are re-ordered by light field distance
    (between the query mesh, or the query's decoded shape, and the candidates' decoded shapes).

    Returns {"query": ..., "results": [{"key", "latent_distance", ["lfd"]}], "query_mesh": (verts, faces) or None}.
    """
    autoencoder, _ = load_any(ckpt, device)
    manifest = load_manifest(shard_dir)
    keys, codes = read_all_latents(default_latents(str(shard_dir), str(ckpt)))
    query_mesh = None
    path = Path(query)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not svr_ckpt:
            raise ValueError(f"{query} is an image: give --svr CKPT (an image encoder) to turn it into a code")
        svr = load_checkpoint(svr_ckpt, device, expect="svr")
        view = prepare_photo(path, int(svr.hparams.get("image_size", 137)))
        z = svr.encoder(model_input(view, svr))[0]
    elif path.suffix:
        if not path.is_file():
            raise FileNotFoundError(f"{query}: no such file")
        z, query_mesh = mesh_code(autoencoder, path, manifest)
    else:
        z = shape_codes(autoencoder, shard_dir, [query])[query]
    distances = np.linalg.norm(codes - z.cpu().numpy()[None], axis=1)
    order = [i for i in np.argsort(distances, kind="stable") if keys[i] != query]
    results = [{"key": keys[i], "latent_distance": float(distances[i])} for i in order[:max(k, rerank_lfd)]]
    if rerank_lfd:
        if query_mesh is None:
            verts, faces, _ = extract_mesh(autoencoder, z, resolution)
            query_mesh = (verts, faces)
        reference = light_field_descriptor(*query_mesh)
        table = torch.as_tensor(codes[[keys.index(row["key"]) for row in results]], device=autoencoder.device)
        for row, (verts, faces, _) in zip(results, extract_many(autoencoder, table, resolution)):
            row["lfd"] = lfd_distance(reference, light_field_descriptor(verts, faces)) if len(faces) else float("inf")
        results.sort(key=lambda r: r["lfd"])
    return {"query": query, "results": results[:k], "query_mesh": query_mesh}


def _set_scores(clouds: List[Optional[np.ndarray]], references: List[np.ndarray], categories: np.ndarray,
                per_shape: int) -> Tuple[Dict[str, dict], np.ndarray, set]:
    """COV / MMD rows (per category of the references, over categories, over shapes) of one set of samples, the
    (sample, reference) distances, and the references that are some sample's nearest.

    cov uses every sample; cov@1x is the mean COV of `per_shape` disjoint draws of as many samples as references
    (the ratio most papers' tables leave unsaid); an empty sample matches no reference.
    """
    distances = np.full((len(clouds), len(references)), np.inf)
    full = [i for i, c in enumerate(clouds) if c is not None]
    if full:
        distances[full] = 1000.0 * pairwise_chamfer_l2([clouds[i] for i in full], references)
    n = len(references)
    everyone = nearest_references(distances)
    draws = [nearest_references(distances, range(k * n, min(len(clouds), (k + 1) * n)))
             for k in range(max(1, min(per_shape, len(clouds) // n)))]
    summary = {}
    for category in sorted(set(categories)):
        columns = np.flatnonzero(categories == category)
        summary[category] = {"shapes": len(columns), "cov": float(np.isin(columns, list(everyone)).mean()),
                             "cov@1x": float(np.mean([np.isin(columns, list(d)).mean() for d in draws])),
                             "mmd": float(distances[:, columns].min(axis=0).mean())}
    groups = list(summary.values())
    summary["mean over categories"] = {"shapes": n, **{m: float(np.mean([g[m] for g in groups]))
                                                      for m in ("cov", "cov@1x", "mmd")}}
    whole = coverage_and_mmd(distances)  # the whole reference set's COV / MMD
    summary["mean over shapes"] = {"shapes": n, "cov": whole["cov"],
                                   "cov@1x": float(np.mean([len(d) / n for d in draws])), "mmd": whole["mmd"]}
    return summary, distances, everyone


def _drawn_scores(clouds: List[Optional[np.ndarray]], references: List[np.ndarray], categories: np.ndarray,
                  per_shape: int, draws: int) -> Tuple[Dict[str, dict], np.ndarray, np.ndarray]:
    """_set_scores of each of `draws` disjoint blocks of the samples, averaged: every row's cov, cov@1x and mmd
    are means over the draws, cov min / cov max the extremes of its cov. Also per reference shape: the mean over the
    draws of its distance to the nearest sample, and the share of draws in which some sample matched it."""
    size = len(clouds) // draws
    tables, nearest, matched = [], [], []
    for first in range(0, size * draws, size):
        summary, distances, found = _set_scores(clouds[first:first + size], references, categories, per_shape)
        tables.append(summary)
        nearest.append(distances.min(axis=0))
        matched.append(np.isin(np.arange(len(references)), list(found)))
    merged = {}
    for name, row in tables[0].items():
        covs = [t[name]["cov"] for t in tables]
        merged[name] = {"shapes": row["shapes"], "cov": float(np.mean(covs)), "cov min": float(min(covs)),
                        "cov max": float(max(covs)),
                        **{m: float(np.mean([t[name][m] for t in tables])) for m in ("cov@1x", "mmd")}}
    return merged, np.mean(nearest, axis=0), np.mean(matched, axis=0)


@torch.no_grad()
def evaluate(ckpt: str | Path, shard_dir: str | Path, *, split: str = "test", device: str = "cpu",
             out_dir: Optional[str | Path] = None, samples: int = 0, per_shape: int = SAMPLES_PER_SHAPE,
             draws: int = 1, ceiling: bool = True) -> Dict[str, dict]:
    """COV and MMD of a latent GAN against the shapes of a split, per category of the reference shapes.

    `draws` disjoint sets of `samples` generated shapes each (0: `per_shape` per reference shape; seeds 0 up),
    decoded at the GAN's eval resolution, are compared with every reference shape by Chamfer-L2 x1000 on
    eval_points points; an empty one matches none. Per set and category c: mmd_c is the mean over c's shapes of the
    distance to their nearest sample, cov_c the share of c's shapes that are the nearest reference of some sample;
    the mean rows are the whole reference set's COV/MMD; cov@1x is COV with as many samples as reference shapes.
    The table holds the means over the sets, with the lowest and highest cov (cov min, cov max): on a test split of
    a few dozen shapes one set's COV moves by several hundredths with the draw alone. With `ceiling`, the row
    "train shapes (ceiling)" scores as many training shapes (one set), encoded and decoded by the autoencoder, in
    place of samples: what a GAN that reproduced its training set exactly would score under the same counts.
    """
    if draws < 1:
        raise ValueError(f"draws={draws}: evaluate at least one set of samples")
    need_shards(shard_dir, "gan")
    autoencoder, gan = load_any(ckpt, device)
    if gan is None:
        raise ValueError(f"{ckpt} is an autoencoder checkpoint: this evaluates a latent GAN's (train.stage=gan)")
    hp, rng = gan.hparams, np.random.default_rng(0)
    keys, references = _reference_surfaces(shard_dir, split, hp.eval_points, rng)
    count = samples or per_shape * len(keys)
    categories = np.array([key.split("/")[0] for key in keys])
    decoder, dtype = autoencoder.model.decoder, inference_dtype(device)  # bf16 (fp32 near 0.5) where native
    clouds = []
    for first in range(0, count * draws, count):  # a set at a time: its grids are count x eval_resolution^3
        clouds += decoded_surfaces(decoder, gan.codes_for_seeds(range(first, first + count)), hp.eval_resolution,
                                   hp.eval_points, rng, dtype)[1]
    summary, nearest, matched = _drawn_scores(clouds, references, categories, per_shape, draws)
    summary["mean over shapes"]["empty"] = float(sum(c is None for c in clouds))
    if ceiling and split != "train":
        ceiling_rng = np.random.default_rng(1)  # the same training shapes and points whatever the draws
        codes = _train_codes(autoencoder, shard_dir, count, ceiling_rng)
        if len(codes):
            _, bound_clouds = decoded_surfaces(decoder, codes, hp.eval_resolution, hp.eval_points, ceiling_rng, dtype)
            bound, _, _ = _drawn_scores(bound_clouds, references, categories, per_shape, 1)
            summary["train shapes (ceiling)"] = dict(bound["mean over shapes"], shapes=len(codes))
    for row in summary.values():  # every row holds every column (the CSV's)
        row.setdefault("empty", float("nan"))
    if out_dir:
        rows = [{"key": key, "category": str(c), "matched": float(m), "mmd": float(d)}
                for key, c, m, d in zip(keys, categories, matched, nearest)]
        write_eval(Path(out_dir), eval_name("gan", split), rows, summary)
    return summary


def _reference_surfaces(shard_dir: str | Path, split: str, points: int, rng) -> Tuple[List[str], List[np.ndarray]]:
    """The keys of a split's shapes and `points` of each one's stored surface samples."""
    keys, references = [], []
    for batch in iter_split(shard_dir, split, 8, surface=True):
        for key, surface in zip(batch["key"], batch["surface_points"].numpy()):
            keys.append(key)
            references.append(surface[rng.choice(len(surface), points, replace=len(surface) < points)])
    if not keys:
        raise ValueError(f"{shard_dir} split {split!r}: no shapes to compare the GAN's samples with")
    return keys, references


def _train_codes(autoencoder, shard_dir: str | Path, count: int, rng) -> torch.Tensor:
    """The autoencoder's codes of `count` training shapes drawn at random, in random order (all of them when there
    are fewer)."""
    total = load_manifest(shard_dir)["splits"].get("train", {}).get("samples", 0)
    wanted = set(rng.choice(total, min(count, total), replace=False).tolist()) if total else set()
    codes, seen = [], 0
    for batch in iter_split(shard_dir, "train", 8):
        picked = [i for i in range(len(batch["key"])) if seen + i in wanted]
        seen += len(batch["key"])
        if picked:
            codes.append(autoencoder.model.encoder(batch["voxels"][picked].to(autoencoder.device)))
    if not codes:
        return torch.zeros(0)
    codes = torch.cat(codes)  # in key order, so grouped by category: shuffled, as samples would come
    return codes[torch.as_tensor(rng.permutation(len(codes)), device=codes.device)]


@torch.no_grad()
def write_sheets(ckpt: str | Path, shard_dir: str | Path, *, split: str, keys: Sequence[str], out_dir: str | Path,
                 device: str = "cpu", resolution: int = 128, samples: int = 8, steps: int = 8) -> List[Path]:
    """gan_samples.png: `samples` generated shapes (noise seeds 0 up) and gan_interpolation.png: `steps` shapes on
    the line between the first two, extracted at resolution^3, their meshes in the row's mesh folders. A generator
    makes its own shapes: the split's `keys` are not shown."""
    autoencoder, gan = load_any(ckpt, device)
    if gan is None:
        raise ValueError(f"{ckpt} is an autoencoder checkpoint: the GAN's sheets need a latent GAN's")
    out, row = Path(out_dir), STAGES["gan"]
    seeds = list(range(samples))
    shapes = codes_to_meshes(autoencoder, gan_codes(gan, seeds), out / row.mesh_folder("GAN samples"),
                             [f"gan_{s}" for s in seeds], resolution=resolution)
    line = interpolate_codes(*gan_codes(gan, [0, 1]), steps)
    strip = codes_to_meshes(autoencoder, line, out / row.mesh_folder("Interpolation"),
                            [f"step_{i}" for i in range(steps)], resolution=resolution)
    return [write_strip(out / "gan_samples.png", shapes), write_strip(out / "gan_interpolation.png", strip,
                                                                       per_line=len(strip))]
