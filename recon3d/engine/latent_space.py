"""Working in the latent space of a trained autoencoder: generate shapes with the latent GAN, interpolate between
codes, and retrieve shapes by latent distance."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from recon3d.data import schema

GAN_SAMPLE = re.compile(r"^gan:(\d+)$")


def load_any(ckpt: str | Path, device: str = "cpu") -> Tuple[object, object]:
    """(autoencoder task, GAN task or None) from an autoencoder or a latent-GAN checkpoint (which names its
    autoencoder)."""
    import recon3d.engine.build  # noqa: F401  (registers the config classes as safe globals)
    from recon3d.engine.inference import load_task
    from recon3d.tasks.gan import LatentGANTask

    hparams = torch.load(str(ckpt), map_location="cpu", weights_only=True).get("hyper_parameters", {})
    if "noise_dim" not in hparams:
        return load_task(ckpt, device), None
    gan = LatentGANTask.load_from_checkpoint(str(ckpt), map_location=device, weights_only=True).eval()
    return load_task(hparams["autoencoder_ckpt"], device), gan


@torch.no_grad()
def gan_codes(gan, seeds: Sequence[int]) -> torch.Tensor:
    """One generated code per seed (the same seed gives the same shape)."""
    noise = [torch.randn(gan.hparams.noise_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return gan.generator(torch.stack(noise).to(gan.device))


@torch.no_grad()
def shape_codes(autoencoder, shard_dir: str | Path, keys: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The autoencoder's code of each sample key, encoded from the stored voxels.

    Raises:
        KeyError: a key is in no split of the shards.
    """
    from recon3d.engine.inference import iter_split

    wanted, found = set(keys), {}
    for split in schema.SPLITS:
        for batch in iter_split(shard_dir, split, 8):
            for i, key in enumerate(batch["key"]):
                if key in wanted:
                    found[key] = autoencoder.model.encoder(batch["voxels"][i:i + 1].to(autoencoder.device))[0]
            if len(found) == len(wanted):
                return found
    missing = sorted(wanted - set(found))
    raise KeyError(f"{shard_dir}: no sample {missing[0]!r} (keys look like 'chair/chair_001'; see shards summary)")


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
    from recon3d.engine.inference import extract_mesh, save_mesh

    rows = []
    for name, z in zip(names, codes):
        verts, faces, _ = extract_mesh(autoencoder, z, resolution)
        path = save_mesh(Path(out_dir) / f"{name}.{fmt}", verts, faces)
        rows.append({"name": name, "path": str(path), "faces": len(faces), "mesh": (verts, faces)})
    return rows


def write_strip(path: Path, rows: List[dict], size: int = 128, per_line: int = 8) -> Path:
    """Renders of the rows' meshes side by side (per_line to a line), each labelled with its name, as one PNG."""
    from PIL import Image, ImageDraw

    from recon3d.geometry.render import render_preview

    tiles = []
    for row in rows:
        tile = Image.fromarray(render_preview(*row["mesh"], size))
        ImageDraw.Draw(tile).text((2, 2), row["name"], fill="black")
        tiles.append(np.asarray(tile))
    blank = np.full_like(tiles[0], 255)
    lines = []
    for start in range(0, len(tiles), per_line):
        line = tiles[start:start + per_line]
        line += [blank] * (min(per_line, len(tiles)) - len(line))
        lines.append(np.concatenate(line, axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    Image.fromarray(np.concatenate(lines, axis=0)).save(tmp)
    tmp.replace(path)
    return path


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@torch.no_grad()
def mesh_code(autoencoder, path: str | Path, manifest: dict) -> Tuple[torch.Tensor, tuple]:
    """(z, (vertices, faces)) of a mesh file, voxelised exactly as the shards were (their geometry settings)."""
    from recon3d.config import GeometryConfig
    from recon3d.data.formats import load_mesh
    from recon3d.data.prepare import normalise_for, solid_for

    geo = GeometryConfig(**manifest["config"]["geometry"])
    mesh = load_mesh(path)
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
    from recon3d.data.latents import read_all_latents
    from recon3d.data.writer import load_manifest
    from recon3d.engine.build import default_latents
    from recon3d.engine.inference import extract_mesh

    autoencoder, _ = load_any(ckpt, device)
    manifest = load_manifest(shard_dir)
    keys, codes = read_all_latents(default_latents(str(shard_dir), str(ckpt)))
    query_mesh = None
    path = Path(query)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not svr_ckpt:
            raise ValueError(f"{query} is an image: give --svr CKPT (an image encoder) to turn it into a code")
        from recon3d.data.photo import prepare_photo
        from recon3d.engine.reconstruct import encoder_input, load_svr

        svr, _ = load_svr(svr_ckpt, device)
        view = prepare_photo(path, int(svr.hparams.get("image_size", 137)))
        z = svr.encoder(encoder_input(view, int(svr.hparams.image_channels),
                                      int(svr.hparams.get("crop_size", 128))).to(device))[0]
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
        from recon3d.geometry.lfd import lfd_distance, light_field_descriptor

        if query_mesh is None:
            verts, faces, _ = extract_mesh(autoencoder, z, resolution)
            query_mesh = (verts, faces)
        reference = light_field_descriptor(*query_mesh)
        table = torch.as_tensor(codes, device=autoencoder.device)
        for row in results:
            verts, faces, _ = extract_mesh(autoencoder, table[keys.index(row["key"])], resolution)
            row["lfd"] = lfd_distance(reference, light_field_descriptor(verts, faces)) if len(faces) else float("inf")
        results.sort(key=lambda r: r["lfd"])
    return {"query": query, "results": results[:k], "query_mesh": query_mesh}
