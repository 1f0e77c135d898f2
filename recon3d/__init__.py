"""recon3d: single-image 2D->3D reconstruction networks trained on a cluster.

`recon3d.load(path)` gives a trained model to use from Python (recon3d/api.py); `import recon3d` itself stays light
(no torch until a model is loaded)."""
__version__ = "0.2.0"


def load(path, device: str = "auto"):
    """The model of a recon3d checkpoint, run folder or DeepSpeed folder: see recon3d.api.load and recon3d.api.Model
    (reconstruct, encode, decode, generate, interpolate)."""
    from recon3d.api import load as load_model  # noqa: PLC0415 - `import recon3d` loads no torch

    return load_model(path, device)
