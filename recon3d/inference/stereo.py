"""Deep3D at use time: stereo pairs from images, frame folders and videos, per-category evaluation against the copy
and shift baselines, and the check on a real rectified pair (scikit-image's Middlebury motorcycle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.data import stereo_motorcycle

from recon3d.data.loading.datamodule import iter_split
from recon3d.files import atomic_write
from recon3d.inference.outputs import save_png
from recon3d.inference.splits import pick_batch, view_options
from recon3d.inference.tables import eval_name, finish_eval, shape_row
from recon3d.models.stereo import select_disparity
from recon3d.runs import run_folder
from recon3d.tasks.checkpoints import load_checkpoint
from recon3d.tasks.stereo import pair_errors, shift_by

TABLE_COLUMNS = ("shapes", "mae", "mae_copy", "mae_shift")
TABLE_NOTE = "MAE of the right view on the 0-255 scale: the model, copying the left view, shifting it by the " \
             "object's true disparity"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@torch.no_grad()
def evaluate(ckpt: str | Path, shard_dir: str | Path = "", *, split: str = "test", device: str = "cpu",
             out_dir: Optional[str | Path] = None, batch_size: int = 16, real: bool = False) -> Dict[str, dict]:
    """Per-category MAE (0-255) of the synthesised right view and of the two baselines (copy the left view; shift
    it by the object's disparity) on a split's evaluation pairs; writes eval_stereo_<split>.json/.csv. With `real`,
    also the real-pair check (real_pair_check), its result under the key "real pair" of the summary.

    Raises:
        ValueError: neither shards nor real.
    """
    if not shard_dir and not real:
        raise ValueError("evaluating a stereo checkpoint needs --shards DIR, --real (the real pair) or both")
    summary: dict = {}
    if shard_dir:
        task = load_checkpoint(ckpt, device, expect="stereo")
        rows = []
        for batch in iter_split(shard_dir, split, batch_size, **view_options(task, "stereo")):
            left, right = batch["left"].to(device), batch["right"].to(device)
            errors = pair_errors(task.model(left)["right"], left, right, batch["mean_disparity"].to(device))
            rows += [shape_row(key, view=int(batch["view"][i]), **{n: float(v[i]) for n, v in errors.items()})
                     for i, key in enumerate(batch["key"])]
        summary = finish_eval(rows, eval_name("stereo", split), out_dir, f"{shard_dir} split {split!r}")
    if real:
        summary["real pair"] = real_pair_check(ckpt, out_dir or run_folder(ckpt) / "eval", device=device)
    return summary


@torch.no_grad()
def synthesise_right(task, left: np.ndarray, work_height: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right view (H, W, 3) uint8 and disparity (H, W) in pixels of a left image (H, W, 3) uint8.

    The network runs on the image resized to `work_height` rows (0: the training crop size), as Deep3D did; its
    disparity planes are scaled up and the selection layer renders the right view at full resolution."""
    device = next(task.parameters()).device
    image = torch.tensor(np.asarray(left), dtype=torch.float32, device=device).permute(2, 0, 1)[None] / 255.0
    height, width = image.shape[-2:]
    work_height = work_height or int(task.hparams.crop_size)
    work_width = max(8, int(round(width * work_height / height)))
    small = F.interpolate(image, size=(work_height, work_width), mode="area")
    if task.hparams.image_channels == 1:
        small = (small * torch.tensor([0.299, 0.587, 0.114], device=device)[:, None, None]).sum(1, keepdim=True)
    probs = torch.softmax(task.model.plane_logits(small), dim=1)
    probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
    disparities = task.model.disparities * (width / work_width)
    right = select_disparity(image, probs, disparities)
    disparity = (probs * disparities[None, :, None, None]).sum(1)[0]
    return (np.rint(right[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8),
            disparity.cpu().numpy())


def anaglyph(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Red-cyan anaglyph (H, W, 3) uint8: red from the left eye, green and blue from the right."""
    return np.concatenate([left[..., :1], right[..., 1:]], axis=-1)


def disparity_image(disparity: np.ndarray, high: float) -> np.ndarray:
    """(H, W, 3) uint8 grey picture of a disparity map, 0 -> black, `high` -> white."""
    grey = np.rint(np.clip(disparity / max(high, 1e-6), 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


@torch.no_grad()
def write_sheets(ckpt: str | Path, shard_dir: str | Path, *, split: str, keys: Sequence[str], out_dir: str | Path,
                 device: str = "cpu") -> List[Path]:
    """stereo_sheet.png: the evaluation pairs of a split's shapes `keys`, left | predicted right | true right | the
    red-cyan anaglyph of left and predicted right, one shape per line."""
    task = load_checkpoint(ckpt, device, expect="stereo")
    batch = pick_batch(shard_dir, split, keys, **view_options(task, "stereo"))
    predicted = task.model(batch["left"].to(device))["right"].cpu()

    def rgb(image: torch.Tensor) -> np.ndarray:
        image = image.expand(3, -1, -1).permute(1, 2, 0).clamp(0, 1).numpy()
        return np.rint(image * 255).astype(np.uint8)

    lines = []
    for i in range(len(batch["key"])):
        left, guess, right = rgb(batch["left"][i]), rgb(predicted[i]), rgb(batch["right"][i])
        lines.append(np.concatenate([left, guess, right, anaglyph(left, guess)], axis=1))
    return [save_png(Path(out_dir) / "stereo_sheet.png", np.concatenate(lines, axis=0))]


def _mae(image: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute error of two images on the 0-255 scale."""
    return float(np.abs(image.astype(np.float64) - truth.astype(np.float64)).mean())


def disparity_errors(disparity: np.ndarray, truth: np.ndarray, known: np.ndarray, suffix: str) -> dict:
    """Stereo benchmarks' disparity errors over the pixels where the truth is known, in pixels of the image compared:
    the end-point error (mean absolute error) and the bad-pixel rates, the shares off by more than 1 and 2 pixels."""
    error = np.abs(disparity - truth)[known]
    return {f"disparity_mae_px{suffix}": float(error.mean()), f"disparity_bad1{suffix}": float((error > 1).mean()),
            f"disparity_bad2{suffix}": float((error > 2).mean())}


@torch.no_grad()
def real_pair_check(ckpt: str | Path, out_dir: str | Path, scale: int = 4, device: str = "cpu") -> dict:
    """The model on a real rectified pair with ground truth (scikit-image's Middlebury motorcycle, shipped with
    the package) downscaled by `scale`: MAE (0-255) of the synthesised right view against the real one beside the
    two baselines (copy the left view; shift it by the mean true disparity), and the disparity's errors where the
    truth is known (disparity_errors), the model's and the constant mean true disparity's. Writes pictures and
    real_pair.json to out_dir."""
    task = load_checkpoint(ckpt, device, expect="stereo")
    left, right, truth = stereo_motorcycle()
    size = (left.shape[1] // scale, left.shape[0] // scale)
    left, right = (np.asarray(Image.fromarray(x).resize(size, Image.BOX)) for x in (left, right))
    known = np.isfinite(truth)
    truth = np.where(known, truth, 0.0) / scale
    truth = truth[::scale, ::scale][:size[1], :size[0]]
    known = known[::scale, ::scale][:size[1], :size[0]]
    predicted, disparity = synthesise_right(task, left, work_height=left.shape[0])
    mean_disparity = float(truth[known].mean())
    as_tensor = torch.tensor(left, dtype=torch.float32).permute(2, 0, 1)[None]  # a copy: `left` is read-only
    shifted = shift_by(as_tensor, torch.tensor([mean_disparity]))[0].permute(1, 2, 0).numpy()
    result = {"image": f"{size[0]}x{size[1]} (1/{scale} of the original)", "mae": _mae(predicted, right),
              "mae_copy": _mae(left, right), "mae_shift": _mae(shifted, right),
              "mean_true_disparity_px": mean_disparity,
              **disparity_errors(disparity, truth, known, ""),
              **disparity_errors(np.full_like(truth, mean_disparity), truth, known, "_constant"),
              "model_disparity_range_px": [float(task.hparams.disparity_min), float(task.hparams.disparity_max)],
              "picture": str(Path(out_dir) / "real_pair.png")}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    high = max(float(truth.max()), float(task.hparams.disparity_max))
    sheet = np.concatenate([np.concatenate([left, predicted], 1),
                            np.concatenate([disparity_image(disparity, high), disparity_image(truth, high)], 1)], 0)
    save_png(out / "real_pair.png", sheet)
    atomic_write(out / "real_pair.json", json.dumps(result, indent=1).encode())
    return result


def stereo_files(ckpt: str | Path, source: str | Path, out_dir: str | Path, *, work_height: int = 0,
                 device: str = "cpu") -> List[Path]:
    """Side-by-side and anaglyph outputs of an image, a folder of frames (sorted by name) or a video (read and
    written with imageio-ffmpeg's own ffmpeg). Returns the files written."""
    task = load_checkpoint(ckpt, device, expect="stereo")
    source, out = Path(source), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if source.is_dir() or source.suffix.lower() in IMAGE_SUFFIXES:
        frames = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if source.is_dir() \
            else [source]
        if not frames:
            raise ValueError(f"{source}: no image files (png, jpg, bmp, webp) in this folder")
        written = []
        for frame in frames:
            with Image.open(frame) as img:
                left = np.asarray(img.convert("RGB"))
            right, _ = synthesise_right(task, left, work_height)
            for name, picture in (("sbs", np.concatenate([left, right], 1)), ("anaglyph", anaglyph(left, right))):
                written.append(save_png(out / f"{frame.stem}.{name}.png", picture))
        return written
    return _stereo_video(task, source, out, work_height)


def _stereo_video(task, source: Path, out: Path, work_height: int) -> List[Path]:
    try:
        import imageio_ffmpeg  # noqa: PLC0415 - the video extra
    except ImportError:
        raise ValueError("video input needs imageio-ffmpeg (it ships its own ffmpeg): pip install "
                         "'recon3d[video]', or pass a folder of frames") from None
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    reader = imageio_ffmpeg.read_frames(str(source))
    info = next(reader)
    width, height = info["size"]
    fps = info.get("fps") or 25
    paths = {name: out / f"{source.stem}.{name}.mp4" for name in ("sbs", "anaglyph")}
    tmps = {name: path.with_name(path.stem + ".tmp.mp4") for name, path in paths.items()}
    writers = {name: imageio_ffmpeg.write_frames(str(tmps[name]), (width * (2 if name == "sbs" else 1), height),
                                                 fps=fps, macro_block_size=1) for name in paths}
    for writer in writers.values():
        writer.send(None)
    frames = 0
    for raw in reader:
        left = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
        right, _ = synthesise_right(task, left, work_height)
        writers["sbs"].send(np.ascontiguousarray(np.concatenate([left, right], 1)))
        writers["anaglyph"].send(np.ascontiguousarray(anaglyph(left, right)))
        frames += 1
    for writer in writers.values():
        writer.close()
    if frames == 0:
        raise ValueError(f"{source}: no frames could be read")
    for name in paths:
        tmps[name].replace(paths[name])
    return list(paths.values())
