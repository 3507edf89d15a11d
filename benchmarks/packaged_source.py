"""Pack the natural-image tiny MAE (``../shared/weights``) into cspt's package data, and measure what half
precision changes.

The packaged file is ``src/cspt/weights/mae_vit_tiny_p8_64_tinyimagenet.safetensors``: every tensor in fp16
except the fixed sin-cos position embeddings (fp32: cspt recognises them to recompute them for other input
sizes, which fp16 rounding would hide), with a JSON sidecar (architecture, pixel contract, lineage, terms).
The script compares the fp32 original and the packaged weights on the same inputs:

- the MAE loss (same masks) on 256 RSSCN7 images at 64 px, and on the demo's NEON scenes (its stage 2 start);
- a kNN probe (k=20, cosine) on RSSCN7, half/half split.

Usage: python benchmarks/packaged_source.py [--write] [--shared ../shared]
(without --write it only measures the file already packaged against the original)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cspt.data.classification import LabelledImages, LabelledSet  # noqa: E402
from cspt.data.pixels import PixelContract  # noqa: E402
from cspt.models.classifier import pooled_features  # noqa: E402
from cspt.models.mae import MaskedAutoencoderViT  # noqa: E402
from cspt.models.vit import resolve_arch  # noqa: E402
from cspt.tasks.probe import knn_predict  # noqa: E402
from cspt.weights.export import sha256_of  # noqa: E402
from cspt.weights.load import load_checkpoint, load_into_model  # noqa: E402
from cspt.weights.packaged import PACKAGED, packaged_file, packaged_path  # noqa: E402

KEEP_FP32 = ("pos_embed", "decoder_pos_embed")


def pack(original: Path, target: Path) -> None:
    checkpoint = torch.load(original, map_location="cpu", weights_only=True)
    state = {k: (v if k in KEEP_FP32 else v.half()).contiguous() for k, v in checkpoint["model"].items()}
    config = checkpoint["config"]
    info = {
        "architecture": {"embed_dim": 192, "depth": 8, "num_heads": 3, "mlp_ratio": 4.0, "patch_size": 8,
                         "img_size": 64, "in_chans": 3, "decoder_dim": 128, "decoder_depth": 1,
                         "decoder_num_heads": 4},
        "format": "MAE (timm names), fp16 but the fixed sin-cos position embeddings",
        "pixels": PixelContract(tuple(config["mean"]), tuple(config["std"])).to_dict(),
        "terms": PACKAGED["terms"],
        "lineage": [{"stage": "source", "path": f"../shared/weights/{original.name}", "format": "official MAE layout",
                     "sha256": sha256_of(original), "data": config["data"], "epochs": config["epochs"],
                     "mask_ratio": config["mask_ratio"], "norm_pix_loss": config["norm_pix_loss"]},
                    {"stage": "packaged for cspt (fp16)", "script": "benchmarks/packaged_source.py"}],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target), metadata={"cspt": json.dumps(info)})
    target.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {target} ({target.stat().st_size / 2**20:.2f} MiB)")


def model_of(path: Path) -> MaskedAutoencoderViT:
    checkpoint = load_checkpoint(path)
    model = MaskedAutoencoderViT(resolve_arch({}, None, checkpoint.arch))
    load_into_model(model, checkpoint)
    return model.eval()


@torch.no_grad()
def measure(models: dict[str, MaskedAutoencoderViT], files: list[Path], labels: list[int]) -> None:
    contract = PixelContract((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    data = LabelledImages(LabelledSet(files, labels, sorted(set(map(str, labels)))), contract, 64, train=False,
                          crop_ratio=1.0)
    images = torch.stack([data[(i, 0)]["image"] for i in range(len(files))])
    noise = torch.rand(len(images), 64, generator=torch.Generator().manual_seed(0))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    bank, queries = order[: len(order) // 2], order[len(order) // 2:]
    targets = torch.tensor(labels)
    for name, model in models.items():
        loss = float(model(images, noise=noise)[0])
        features = pooled_features(model, images).float()
        scores = knn_predict(features[bank], targets[bank], features[queries], max(labels) + 1)
        accuracy = float((scores.argmax(1) == targets[queries]).float().mean())
        print(f"{name:>9}: MAE loss {loss:.5f}, kNN accuracy {accuracy:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--write", action="store_true", help="(re)write the packaged file from the original")
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    original = Path(args.shared) / "weights" / "mae_vit_tiny_p8_64_tinyimagenet.pth"
    if args.write:
        pack(original, packaged_path())
    folders = sorted(p for p in (Path(args.shared) / "data" / "rsscn7").iterdir() if p.is_dir())
    chosen = random.Random(0).sample([(f, c) for c, folder in enumerate(folders)
                                      for f in sorted(folder.glob("*.jpg"))], args.images)
    models = {"fp32": model_of(original), "packaged": model_of(packaged_file())}
    measure(models, [f for f, _ in chosen], [c for _, c in chosen])
    difference = max((a.float() - b.float()).abs().max().item() for a, b in
                     zip(models["fp32"].state_dict().values(), models["packaged"].state_dict().values()))
    print(f"largest weight difference: {difference:.2e}")


if __name__ == "__main__":
    main()
