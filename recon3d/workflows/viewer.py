"""Meshes a person can turn in report.html: Google's <model-viewer> (vendored, see vendor/README.md) inlined once,
each mesh a GLB inside a data: URL, so the page stays one file that opens without a network.

Opened with `#viewer-check` at the end of its address, the page checks itself: once every viewer has loaded its mesh
it shows each in turn (turned a little, so that it draws anew) and counts the drawn (non-white) pixels of the canvas
that viewer displays, and writes them on <body> (data-viewers-drawn="k/n" and data-viewer-pixels), which the headless
Chromium test reads.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence, Tuple

import trimesh

VENDOR = Path(__file__).resolve().parent / "vendor"
LIBRARY = VENDOR / "model-viewer-umd.min.js"
MESH_SUFFIXES = (".obj", ".ply", ".glb", ".off", ".stl")

CHECK = """<script>document.addEventListener('DOMContentLoaded',function(){if(location.hash!=='#viewer-check')return;
var views=Array.prototype.slice.call(document.querySelectorAll('model-viewer')),loaded=0,drawn=0,counts=[];
function pixels(v){var shown=v.shadowRoot&&v.shadowRoot.querySelector('canvas');if(!shown||!shown.width)return 0;
var c=document.createElement('canvas');c.width=shown.width;c.height=shown.height;var g=c.getContext('2d');
g.drawImage(shown,0,0);var d=g.getImageData(0,0,c.width,c.height).data,n=0;for(var i=0;i<d.length;i+=4){
if(d[i+3]>0&&(d[i]<235||d[i+1]<235||d[i+2]<235))n++;}return n;}
function measure(i){if(i>=views.length){document.body.setAttribute('data-viewer-pixels',counts.join(' '));
document.body.setAttribute('data-viewers-drawn',drawn+'/'+views.length);return;}
var v=views[i],tries=0;v.scrollIntoView();(function look(){v.cameraOrbit=(150+tries)+'deg 70deg auto';
setTimeout(function(){var n=pixels(v);if(!n&&++tries<200){look();return;}  // the renderer warms up first
counts.push(v.getAttribute('data-name')+':'+n);if(n>0)drawn++;measure(i+1);},500);})();}
function one(){document.body.setAttribute('data-viewers-loaded',++loaded+'/'+views.length);if(loaded===views.length)
measure(0);}views.forEach(function(v){if(v.loaded){one();return;}v.addEventListener('load',one);
v.addEventListener('error',function(){v.setAttribute('data-name',v.getAttribute('data-name')+'(error)');one();});});
if(!views.length)document.body.setAttribute('data-viewers-drawn','0/0');});</script>"""


def glb_bytes(path: Path) -> bytes:
    """The mesh file at `path` as binary glTF (GLB) bytes, grey; b"" for a mesh without faces."""
    loaded = trimesh.load(path)  # an empty reconstruction's file holds no face (trimesh reads it as points)
    parts = list(loaded.geometry.values()) if isinstance(loaded, trimesh.Scene) else [loaded]
    parts = [p for p in parts if isinstance(p, trimesh.Trimesh) and len(p.faces)]
    if not parts:
        return b""
    mesh = trimesh.util.concatenate(parts)
    mesh.visual.face_colors = [180, 180, 190, 255]
    return mesh.export(file_type="glb")


def library_tag() -> str:
    """<script> with the viewer library and the page's self-check (once per page, before the viewers)."""
    return f"<script>{LIBRARY.read_text(encoding='utf-8')}</script>{CHECK}"


def viewer_grid(title: str, meshes: Sequence[Tuple[str, Path]], size: int = 220) -> str:
    """A heading and one <model-viewer> per (label, mesh file): drag to orbit, wheel or pinch to zoom; the camera
    starts in front of the object (recon3d's frame: Y up, the front toward -Z), a little to its right and above."""
    cells = []
    for label, path in meshes:
        name, glb = html.escape(label, quote=True), glb_bytes(path)
        if not glb:  # an empty reconstruction: nothing to turn
            cells.append(f"<figure><div style='width:{size}px;height:{size}px;border:1px solid #ddd'></div>"
                         f"<figcaption>{name} (empty)</figcaption></figure>")
            continue
        uri = "data:model/gltf-binary;base64," + base64.b64encode(glb).decode()
        cells.append(f'<figure><model-viewer src="{uri}" data-name="{name}" camera-controls loading="eager" '
                     f'camera-orbit="155deg 70deg auto" interaction-prompt="none" shadow-intensity="0.6" '
                     f'style="width:{size}px;height:{size}px;background:#fff;border:1px solid #ddd">'
                     f'<div slot="progress-bar"></div></model-viewer><figcaption>{name}</figcaption></figure>')
    if not cells:
        return ""
    return f"<h3>{html.escape(title)} (drag to turn, scroll to zoom)</h3><div class='row'>{''.join(cells)}</div>"


def mesh_files(folder: Path, limit: int = 12) -> list:
    """(label, path) of the first `limit` mesh files in `folder` by name ("chair__chair_001" -> "chair/chair_001")."""
    found = sorted(p for p in folder.glob("*") if p.suffix.lower() in MESH_SUFFIXES) if folder.is_dir() else []
    return [(p.stem.replace("__", "/"), p) for p in found[:limit]]
