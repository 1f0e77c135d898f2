"""The `recon3d` commands that turn codes and images into shapes: reconstruct (photo -> mesh), generate,
interpolate, search, and stereo (image or video -> stereo pair)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _print_meshes(rows: list, sheet: Path) -> None:
    for row in rows:
        print(f"{row['path']}: {row['faces']} faces")
    print(f"sheet: {sheet}")


def _generate(args) -> int:
    from recon3d.engine.latent_space import codes_to_meshes, gan_codes, load_any, write_strip

    autoencoder, gan = load_any(args.ckpt, args.device)
    if gan is None:
        raise ValueError(f"{args.ckpt} is an autoencoder checkpoint: generate needs the latent GAN's "
                         f"(train.stage=gan)")
    seeds = list(range(args.seed, args.seed + args.n))
    rows = codes_to_meshes(autoencoder, gan_codes(gan, seeds), Path(args.output), [f"gan_{s}" for s in seeds],
                           resolution=args.resolution, fmt=args.format)
    _print_meshes(rows, write_strip(Path(args.output) / "samples.png", rows))
    return 0


def _interpolate(args) -> int:
    from recon3d.engine.latent_space import (codes_to_meshes, endpoint_codes, interpolate_codes,
                                             interpolation_weights, load_any, write_strip)

    autoencoder, gan = load_any(args.ckpt, args.device)
    z1, z2 = endpoint_codes(autoencoder, gan, [args.a, args.b], args.shards)
    weights = interpolation_weights(args.steps)
    rows = codes_to_meshes(autoencoder, interpolate_codes(z1, z2, args.steps), Path(args.output),
                           [f"step_{i:02d}_a{a:.2f}" for i, a in enumerate(weights)], resolution=args.resolution,
                           fmt=args.format)
    _print_meshes(rows, write_strip(Path(args.output) / "interpolation.png", rows, per_line=len(rows)))
    return 0


def _reconstruct(args) -> int:
    from recon3d.engine.reconstruct import reconstruct_images, write_photo_sheet

    rows = reconstruct_images(args.ckpt, args.images, args.output, resolution=args.resolution, fmt=args.format,
                              fill=args.fill, device=args.device, model=args.model)
    done = [r for r in rows if "path" in r]
    for row in done:
        print(f"{row['path']}: {row['faces']} faces")
    if done:
        print(f"sheet (framed input | reconstruction): {write_photo_sheet(Path(args.output) / 'sheet.png', rows)}")
    failed = len(rows) - len(done)
    if failed:
        print(f"{failed} of {len(rows)} image(s) skipped (reasons above)", file=sys.stderr)
    return 0 if not failed else 1


def _search(args) -> int:
    from recon3d.engine.latent_space import search

    found = search(args.query, args.ckpt, args.shards, k=args.k, svr_ckpt=args.svr, rerank_lfd=args.rerank_lfd,
                   device=args.device)
    print(f"nearest to {args.query}:")
    for rank, row in enumerate(found["results"], 1):
        lfd = f"  LFD {row['lfd']:.3f}" if "lfd" in row else ""
        print(f"{rank:>3}. {row['key']:<40} latent distance {row['latent_distance']:.4f}{lfd}")
    if args.json:
        Path(args.json).write_text(json.dumps({"query": found["query"], "results": found["results"]}, indent=1))
    return 0


def _add_mesh_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, help="folder for the meshes and the sheet")
    parser.add_argument("--resolution", type=int, default=128, help="extraction grid cells per edge")
    parser.add_argument("--format", default="obj", choices=["obj", "ply", "glb"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def _add_reconstruct_parser(verbs) -> None:
    reconstruct = verbs.add_parser("reconstruct", help="photos or renders -> meshes (image encoder + autoencoder)")
    reconstruct.add_argument("images", nargs="+", help="PNG/JPG files of any size: alpha is used when present, "
                             "otherwise the background is estimated from the border")
    reconstruct.add_argument("--ckpt", required=True, help="image-encoder (train.stage=svr) or VRN checkpoint")
    reconstruct.add_argument("--model", default="svr", choices=["svr", "vrn"],
                             help="svr: image encoder + autoencoder; vrn: the view-aligned volume of a VRN")
    reconstruct.add_argument("--fill", type=float, default=0.7,
                             help="the object's longer side as a fraction of the frame (0.7: as the training renders)")
    _add_mesh_output_args(reconstruct)
    reconstruct.set_defaults(func=_reconstruct)


def _stereo(args) -> int:
    from recon3d.engine.view_models import stereo_files

    for path in stereo_files(args.ckpt, args.input, args.output, work_height=args.height, device=args.device):
        print(path)
    return 0


def _add_stereo_parser(verbs) -> None:
    stereo = verbs.add_parser("stereo", help="an image, a folder of frames or a video -> side-by-side and red-cyan "
                              "anaglyph (Deep3D)")
    stereo.add_argument("input", help="image file, folder of frames, or video file (mp4, mov, ...)")
    stereo.add_argument("-o", "--output", required=True, help="output folder")
    stereo.add_argument("--ckpt", required=True, help="stereo checkpoint (train.stage=stereo)")
    stereo.add_argument("--height", type=int, default=0,
                        help="rows the network sees (0: its training crop); disparities scale to the full image")
    stereo.add_argument("--device", default="cpu", help="cpu or cuda")
    stereo.set_defaults(func=_stereo)


def _add_latent_parsers(verbs) -> None:
    """generate, interpolate, search."""
    generate = verbs.add_parser("generate", help="new shapes from the latent GAN -> meshes + samples.png")
    generate.add_argument("--ckpt", required=True, help="latent-GAN checkpoint (it names its autoencoder)")
    generate.add_argument("-n", "--n", type=int, default=8, help="shapes to generate")
    generate.add_argument("--seed", type=int, default=0, help="first noise seed (sample i uses seed + i)")
    _add_mesh_output_args(generate)
    generate.set_defaults(func=_generate)

    interpolate = verbs.add_parser("interpolate", help="z_i = a_i z1 + (1 - a_i) z2 -> meshes + interpolation.png")
    interpolate.add_argument("a", help="first endpoint: a sample key (chair/chair_001) or gan:SEED")
    interpolate.add_argument("b", help="second endpoint, the same forms")
    interpolate.add_argument("--ckpt", required=True, help="autoencoder or latent-GAN checkpoint")
    interpolate.add_argument("--shards", default="", help="shard folder holding the keys' shapes")
    interpolate.add_argument("--steps", type=int, default=8, help="shapes along the line, endpoints included")
    _add_mesh_output_args(interpolate)
    interpolate.set_defaults(func=_interpolate)

    search = verbs.add_parser("search", help="the nearest shapes of a shard set to a key, a mesh or an image")
    search.add_argument("query", help="a sample key (chair/chair_001), a mesh file, or an image (with --svr)")
    search.add_argument("--ckpt", required=True, help="the autoencoder whose latents were exported for --shards")
    search.add_argument("--shards", required=True, help="shard folder (with latents/<autoencoder run>)")
    search.add_argument("-k", type=int, default=5, help="results to list")
    search.add_argument("--svr", default="", help="image-encoder checkpoint, for image queries")
    search.add_argument("--rerank-lfd", type=int, default=0, metavar="N",
                        help="re-order the N nearest by light field distance (slower: about a second per shape)")
    search.add_argument("--json", default="", help="also write the results to this JSON file")
    search.add_argument("--device", default="cpu", help="cpu or cuda")
    search.set_defaults(func=_search)


def add_parsers(verbs) -> None:
    _add_latent_parsers(verbs)
    _add_reconstruct_parser(verbs)
    _add_stereo_parser(verbs)
