"""The `recon3d` commands that turn codes and images into shapes: reconstruct (photo -> mesh), generate,
interpolate, search, and stereo (image or video -> stereo pair)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from recon3d.cli import options
from recon3d.cli.options import Verb
from recon3d.stages import STAGES


def _print_meshes(rows: list, sheet: Path) -> None:
    for row in rows:
        print(f"{row['path']}: {row['faces']} faces")
    print(f"sheet: {sheet}")


def _generate(args) -> int:
    from recon3d.inference.latent import codes_to_meshes, gan_codes, load_any
    from recon3d.inference.outputs import write_strip

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
    from recon3d.inference.latent import (
        codes_to_meshes,
        endpoint_codes,
        interpolate_codes,
        interpolation_weights,
        load_any,
    )
    from recon3d.inference.outputs import write_strip

    autoencoder, gan = load_any(args.ckpt, args.device)
    z1, z2 = endpoint_codes(autoencoder, gan, [args.a, args.b], args.shards)
    weights = interpolation_weights(args.steps)
    rows = codes_to_meshes(autoencoder, interpolate_codes(z1, z2, args.steps), Path(args.output),
                           [f"step_{i:02d}_a{a:.2f}" for i, a in enumerate(weights)], resolution=args.resolution,
                           fmt=args.format)
    _print_meshes(rows, write_strip(Path(args.output) / "interpolation.png", rows, per_line=len(rows)))
    return 0


def _reconstruct(args) -> int:
    from recon3d.inference.reconstruct import reconstruct_images, write_photo_sheet

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
    from recon3d.inference.latent import search

    found = search(args.query, args.ckpt, args.shards, k=args.k, svr_ckpt=args.svr, rerank_lfd=args.rerank_lfd,
                   device=args.device)
    print(f"nearest to {args.query}:")
    for rank, row in enumerate(found["results"], 1):
        lfd = f"  LFD {row['lfd']:.3f}" if "lfd" in row else ""
        print(f"{rank:>3}. {row['key']:<40} latent distance {row['latent_distance']:.4f}{lfd}")
    if args.json:
        Path(args.json).write_text(json.dumps({"query": found["query"], "results": found["results"]}, indent=1))
    return 0


def _stereo(args) -> int:
    from recon3d.inference.stereo import stereo_files

    for path in stereo_files(args.ckpt, args.input, args.output, work_height=args.height, device=args.device):
        print(path)
    return 0


def _configure_reconstruct(parser) -> None:
    parser.add_argument("images", nargs="+", help="PNG/JPG files of any size: alpha is used when present, "
                        "otherwise the background is estimated from the border")
    options.ckpt(parser, "image-encoder (train.stage=svr) or VRN checkpoint: the checkpoint says which")
    parser.add_argument("--model", default="", choices=["", *STAGES],
                        help="insist on this kind of checkpoint (default: whatever --ckpt is)")
    parser.add_argument("--fill", type=float, default=0.7,
                        help="the object's longer side as a fraction of the frame (0.7: as the training renders)")
    options.meshes(parser)


def _configure_generate(parser) -> None:
    options.ckpt(parser, "latent-GAN checkpoint (it names its autoencoder)")
    parser.add_argument("-n", "--n", type=int, default=8, help="shapes to generate")
    parser.add_argument("--seed", type=int, default=0, help="first noise seed (sample i uses seed + i)")
    options.meshes(parser)


def _configure_interpolate(parser) -> None:
    parser.add_argument("a", help="first endpoint: a sample key (chair/chair_001) or gan:SEED")
    parser.add_argument("b", help="second endpoint, the same forms")
    options.ckpt(parser, "autoencoder or latent-GAN checkpoint")
    options.shards(parser, required=False, what="shard folder holding the keys' shapes")
    parser.add_argument("--steps", type=int, default=8, help="shapes along the line, endpoints included")
    options.meshes(parser)


def _configure_search(parser) -> None:
    parser.add_argument("query", help="a sample key (chair/chair_001), a mesh file, or an image (with --svr)")
    options.ckpt(parser, "the autoencoder whose latents were exported for --shards")
    options.shards(parser, what="shard folder (with latents/<autoencoder run>)")
    parser.add_argument("-k", type=int, default=5, help="results to list")
    parser.add_argument("--svr", default="", help="image-encoder checkpoint, for image queries")
    parser.add_argument("--rerank-lfd", type=int, default=0, metavar="N",
                        help="re-order the N nearest by light field distance (slower: about a second per shape)")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    options.device(parser)


def _configure_stereo(parser) -> None:
    parser.add_argument("input", help="image file, folder of frames, or video file (mp4, mov, ...)")
    options.output(parser, "output folder")
    options.ckpt(parser, "stereo checkpoint (train.stage=stereo)")
    parser.add_argument("--height", type=int, default=0,
                        help="rows the network sees (0: its training crop); disparities scale to the full image")
    options.device(parser)


VERBS = [Verb(name, text, configure, run) for name, text, configure, run in (
    ("reconstruct", "photos or renders -> meshes (image encoder + autoencoder, or VRN)", _configure_reconstruct,
     _reconstruct),
    ("generate", "new shapes from the latent GAN -> meshes + samples.png", _configure_generate, _generate),
    ("interpolate", "z_i = a_i z1 + (1 - a_i) z2 -> meshes + interpolation.png", _configure_interpolate,
     _interpolate),
    ("search", "the nearest shapes of a shard set to a key, a mesh or an image", _configure_search, _search),
    ("stereo", "an image, a folder of frames or a video -> side-by-side and red-cyan anaglyph (Deep3D)",
     _configure_stereo, _stereo),
)]
