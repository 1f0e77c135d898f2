"""recon3d: single-image 2D->3D reconstruction networks trained on a cluster."""
__version__ = "0.2.0"
