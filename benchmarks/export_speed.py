"""Inference speed of an exported model against PyTorch: eager, ``torch.compile`` and onnxruntime on the CPU,
tiles per second over a 2,048-pixel scene, for the tiny CPU recipe's model and ViT-B/16.

Makes a 2,048 x 2,048 RGB GeoTIFF from a real Dubai tile, builds each model with random weights (speed does
not depend on them) as a fine-tuned run, exports it with ``cspt export --to onnx``, cuts the scene into the
windows ``cspt predict`` would run (the model's window and stride, resized to its input) and times each
runtime on the same batches, after one warm-up batch (the compile happens there). Prints tiles per second
and each runtime's ratio to eager, and checks the runtimes agree. Usage:
    python benchmarks/export_speed.py [--task segment|detect] [--models tiny vit_b16] [--max-tiles 48]
                                      [--batch 8] [--work DIR]
PyTorch and onnxruntime each use their default threads (all cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("CSPT_SHARED", ROOT.parent / "shared"))
SOURCE = SHARED / "data" / "dubai" / "tile_1" / "images" / "image_part_002.jpg"
SCENE = 2048

from cspt.data.pixels import PixelContract  # noqa: E402
from cspt.data.windows import window_starts  # noqa: E402
from cspt.models.pyramid import default_taps  # noqa: E402
from cspt.models.vit import ArchConfig  # noqa: E402
from cspt.tasks import detect, segment  # noqa: E402
from cspt.tasks.export_graph import export_graph  # noqa: E402
from cspt.weights.descriptions import DetectorDescription, SegmenterDescription  # noqa: E402
from cspt.weights.export import write_weights  # noqa: E402

#: the tiny CPU recipes' models (segment_tiny_cpu.yaml, detect_tiny_cpu.yaml) and ViT-B/16
ARCHS = {"tiny": ArchConfig(embed_dim=192, depth=8, num_heads=3, patch_size=8, img_size=64),
         "vit_b16": ArchConfig(img_size=224)}
CONTRACT = PixelContract((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def description(task: str, name: str) -> SegmenterDescription | DetectorDescription:
    """The fine-tuned model of ``task`` at size ``name`` (the tiny recipe's head and windows, or ViT-B's)."""
    arch = ARCHS[name]
    tiny = name == "tiny"
    if task == "segment":
        return SegmenterDescription(architecture=arch.to_dict(), pixels=CONTRACT.to_dict(),
                                    palette={"classes": [f"class{i}" for i in range(6)]},
                                    taps=default_taps(arch.depth, "cspt"), channels=64 if tiny else 768,
                                    aux_channels=0, crop_size=arch.img_size, stride=43 if tiny else 168,
                                    resize=0.25 if tiny else 1.0)
    size = 128 if tiny else 224
    return DetectorDescription(architecture={**arch.to_dict(), "img_size": size}, pixels=CONTRACT.to_dict(),
                               classes=["Tree"], taps=default_taps(arch.depth, "cspt"),
                               fpn_channels=64 if tiny else 256, anchor_sizes=[8, 16, 32, 64, 128], tile_size=size,
                               tile_overlap=32, rpn_proposals=500 if tiny else None, box_head="conv" if tiny else "mlp",
                               nms_iou=0.3)


def make_scene(path: Path) -> Path:
    """A 2,048-pixel 8-bit RGB GeoTIFF tiled from a real Dubai aerial image."""
    picture = np.asarray(Image.open(SOURCE).convert("RGB"))
    rows, cols = np.arange(SCENE) % picture.shape[0], np.arange(SCENE) % picture.shape[1]
    pixels = picture[rows[:, None], cols[None, :]].transpose(2, 0, 1)
    with rasterio.open(path, "w", driver="GTiff", height=SCENE, width=SCENE, count=3, dtype="uint8",
                       crs="EPSG:32640", transform=Affine(0.5, 0, 300000.0, 0, -0.5, 2800000.0)) as dst:
        dst.write(pixels)
    return path


def scene_tiles(scene: Path, task: str, info, max_tiles: int) -> torch.Tensor:
    """The scene's windows as the model takes them (segmenter: normalised, resized to its input; detector: 0-1)."""
    pixels = CONTRACT.read(scene)
    image = CONTRACT.normalise(pixels) if task == "segment" else pixels.image
    window, stride = segment.source_window(info) if task == "segment" else (
        info.tile_size, info.tile_size - info.tile_overlap)
    starts = window_starts(SCENE, window, stride)
    crops = [image[:, top:top + window, left:left + window] for top in starts for left in starts][:max_tiles]
    tiles = torch.stack(crops)
    size = info.crop_size if task == "segment" else info.tile_size
    if tiles.shape[-1] != size:
        tiles = F.interpolate(tiles, size=(size, size), mode="bilinear", antialias=True)
    print(f"  {len(starts) ** 2} windows of {window} px in the {SCENE}-px scene; timing {len(tiles)} of them")
    return tiles


def timed(run: Callable[[torch.Tensor], object], tiles: torch.Tensor, batch: int) -> tuple[float, list]:
    """Tiles per second of ``run`` over ``tiles`` in batches, after one warm-up batch; and its outputs."""
    with torch.no_grad():
        run(tiles[:batch])
        outputs, start = [], time.perf_counter()
        for first in range(0, len(tiles), batch):
            outputs.append(run(tiles[first:first + batch]))
        return len(tiles) / (time.perf_counter() - start), outputs


def runtimes(task: str, run_dir: Path, graph: Path) -> dict[str, Callable[[torch.Tensor], object]]:
    """Eager, compiled and onnxruntime forwards of the model, each on a batch tensor."""
    load = segment.load_segmenter if task == "segment" else detect.load_detector
    eager = load(run_dir).model.eval()
    compiled = torch.compile(eager)
    onnx = load(graph).model
    if task == "segment":
        return {"eager": eager, "compile": compiled, "onnxruntime": onnx}
    return {name: (lambda model: lambda batch: model(list(batch)))(model)
            for name, model in (("eager", eager), ("compile", compiled), ("onnxruntime", onnx))}


def agreement(task: str, reference: list, other: list) -> str:
    """How far another runtime's outputs are from eager's."""
    if task == "segment":  # the graph's runtime gives log-probabilities: logits less a constant per pixel
        largest = max(float((a.log_softmax(1) - b.log_softmax(1)).abs().max()) for a, b in zip(reference, other))
        return f"max |log-probability difference| {largest:.1e}"
    pairs = [(a, b) for ra, rb in zip(reference, other) for a, b in zip(ra, rb)]
    same = sum(len(a["boxes"]) == len(b["boxes"]) for a, b in pairs)
    return f"same detection count on {same}/{len(pairs)} tiles"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="segment", choices=["segment", "detect"])
    parser.add_argument("--models", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--max-tiles", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--work", help="folder for the scene, runs and graphs (default: a temporary one)")
    args = parser.parse_args()
    batch = 1 if args.task == "detect" else args.batch  # a detector graph takes one window
    work = Path(args.work or tempfile.mkdtemp(prefix="export_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    scene = make_scene(work / "scene.tif")
    print(f"device: {os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"task {args.task}, batch {batch}")
    for name in args.models:
        info = description(args.task, name)
        run_dir = work / f"{args.task}_{name}"
        file_name = segment.SEGMENTER if args.task == "segment" else detect.DETECTOR
        build = segment.model_from_description if args.task == "segment" else detect.model_from_description
        torch.manual_seed(0)
        write_weights(build(info).state_dict(), run_dir / file_name, info)
        graph = export_graph(run_dir, "onnx", work / f"{args.task}_{name}.onnx")
        print(f"{name}: {info.arch.embed_dim} wide, {info.arch.depth} blocks, patch {info.arch.patch_size}, "
              f"input {info.arch.img_size if args.task == 'segment' else info.tile_size} px")
        tiles = scene_tiles(scene, args.task, info, args.max_tiles)
        speeds, outputs = {}, {}
        for runtime, forward in runtimes(args.task, run_dir, graph).items():
            try:
                speeds[runtime], outputs[runtime] = timed(forward, tiles, batch)
            except Exception as err:  # noqa: BLE001 - a runtime that cannot run here is reported, not fatal
                print(f"  {runtime:>11}: unavailable ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
        for runtime, speed in speeds.items():
            check = "" if runtime == "eager" else f"; {agreement(args.task, outputs['eager'], outputs[runtime])}"
            print(f"  {runtime:>11}: {speed:8.2f} tiles/s, ratio to eager {speed / speeds['eager']:.2f}{check}")


if __name__ == "__main__":
    main()
