"""Semantic segmentation on the real Dubai tiles: pyramid, UperNet, sliding windows, metrics, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cspt.config import SegmentConfig
from cspt.data.masks import Palette, read_mask
from cspt.data.pixels import PixelContract, Pixels
from cspt.data.segmentation import check_pairs, pair_images
from cspt.engine.streaming import blended_logits
from cspt.metrics import segmentation_confusion, segmentation_metrics
from cspt.models.pyramid import ViTFeaturePyramid, default_taps
from cspt.models.segmenter import build_segmenter
from cspt.models.vit import ArchConfig, build_encoder
from cspt.tasks.segment import finetune_segment, load_palette
from tests.conftest import SHARED, TINY_ENCODER_FLAGS, needs, run_cli, write_rgb

DUBAI = SHARED / "data" / "dubai"
TINY = ArchConfig(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=64)
TINY_SEGMENT = dict(embed_dim=64, depth=2, num_heads=2, patch_size=8, crop_size=64, resize=0.125, channels=32,
                    aux_channels=16, drop_path=0.0, layer_decay=1.0, num_workers=0, device="cpu")


@pytest.fixture
def dubai() -> Path:
    return needs(DUBAI)


@pytest.mark.parametrize("style, taps", [("cspt", [3, 5, 7, 11]), ("simple", [11, 11, 11, 11])])
def test_pyramid_levels_and_taps(style: str, taps: list[int]):
    assert default_taps(12, style) == taps
    arch = ArchConfig(embed_dim=32, depth=4, num_heads=2, patch_size=16, img_size=64)
    pyramid = ViTFeaturePyramid(build_encoder(arch), style)
    maps = pyramid(torch.randn(2, 3, 64, 64))
    assert pyramid.strides == [4, 8, 16, 32]
    assert [tuple(m.shape) for m in maps] == [(2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]
    assert len(pyramid.encoder.blocks) == max(pyramid.taps) + 1  # unused blocks pruned (nothing idle for DDP)


def test_segmentation_metrics_match_a_hand_computed_confusion():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    predicted = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])  # the two ignored pixels never count
    confusion = segmentation_confusion(predicted, target, 3, ignore_index=255)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    metrics = segmentation_metrics(confusion, ["a", "b", "c"])
    iou = [1 / 3, 2 / 3, 1 / 2]  # TP / (TP + FP + FN): a 1/(2+2-1), b 2/(2+3-2), c 1/(2+1-1)
    assert [metrics["per_class"][c]["iou"] for c in "abc"] == pytest.approx(iou)
    assert metrics["miou"] == pytest.approx(sum(iou) / 3)
    assert metrics["oa"] == pytest.approx(4 / 6) and metrics["pixels"] == 6
    f1 = [2 * 1 / 4, 2 * 2 / 5, 2 * 1 / 3]
    assert metrics["mean_f1"] == pytest.approx(sum(f1) / 3)
    absent = segmentation_metrics(segmentation_confusion(predicted, target, 4, 255), list("abcd"))
    assert absent["per_class"]["d"]["iou"] is None and absent["miou"] == pytest.approx(metrics["miou"])


def test_sliding_window_keeps_the_image_size_and_equals_one_pass_when_it_covers():
    torch.manual_seed(0)
    model = build_segmenter(TINY, num_classes=5, channels=16, aux_channels=None).eval()
    image = torch.randn(3, 50, 70)
    tiny80 = build_segmenter(ArchConfig(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=80), 5,
                             channels=16, aux_channels=None).eval()
    covering = blended_logits(tiny80, image, window=80, stride=53, blend="none")
    with torch.no_grad():
        whole = tiny80(F.pad(image, (0, 10, 0, 30))[None])[0, :, :50, :70]
    assert covering.shape == (5, 50, 70) and torch.allclose(covering, whole, atol=1e-6)
    odd = torch.randn(3, 100, 75)  # neither side a multiple of the 64-pixel window
    logits = blended_logits(model, odd, window=64, stride=40, blend="none", batch_size=3)
    assert logits.shape == (5, 100, 75) and torch.isfinite(logits).all()
    with torch.no_grad():  # windows start at rows 0, 36 and columns 0, 11: the corner is the first one's
        corner = model(odd[None, :, :64, :64])[0]
    assert torch.allclose(logits[:, :36, :11], corner[:, :36, :11], atol=1e-6)
    assert not torch.allclose(logits[:, :36, 11:20], corner[:, :36, 11:20], atol=1e-6)  # averaged with (0, 11)


@pytest.mark.slow
def test_tiny_model_beats_the_majority_class_on_held_out_dubai_tiles(dubai: Path, tmp_path: Path):
    config = SegmentConfig(images=[str(dubai / f"tile_{i}") for i in range(1, 7)], val_images=[str(dubai / "tile_7")],
                           palette="dubai", output=str(tmp_path / "run"), epochs=3, batch_size=8, lr=1e-3,
                           warmup_epochs=0.5, eval_every=3, **TINY_SEGMENT)
    run_dir = finetune_segment(config)  # 3 epochs x 13 steps of 8 crops
    metrics = json.loads((run_dir / "metrics.json").read_text())
    palette = load_palette("dubai", None)
    train, counts = check_pairs(pair_images(config.images, None), palette, 255)
    majority = int(np.argmax(counts))
    confusion = torch.zeros(5, 5, dtype=torch.long)
    for pair in check_pairs(pair_images(config.val_images, None), palette, 255)[0]:
        target = torch.from_numpy(read_mask(pair.mask, palette, 255))
        confusion += segmentation_confusion(torch.full_like(target, majority), target, 5, 255)
    baseline = segmentation_metrics(confusion, palette.classes)["miou"]
    print(f"Dubai tile_7 mIoU: tiny model {metrics['miou']:.3f}, majority class ({palette.classes[majority]}) "
          f"{baseline:.3f}")
    assert metrics["pixels"] == confusion.sum() and metrics["miou"] > baseline + 0.05


def _write_pair(root: Path, name: str, size: tuple[int, int], colors: list[tuple[int, int, int]]) -> None:
    write_rgb(root / "images" / f"{name}.jpg", size=size[0])
    mask = np.zeros((size[1], size[0], 3), np.uint8)
    for i, color in enumerate(colors):
        mask[:, i * size[0] // len(colors):] = color
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(root / "masks" / f"{name}.png")


@pytest.mark.slow
def test_bad_pairs_give_one_line_errors_naming_the_file(tmp_path: Path):
    road, land = (110, 193, 228), (132, 41, 246)
    _write_pair(tmp_path / "wrong_size", "a", (48, 40), [road])  # mask 48x40, image 48x48
    _write_pair(tmp_path / "odd_colours", "a", (48, 48), [road, (1, 2, 3), (9, 9, 9)])
    write_rgb(tmp_path / "no_mask" / "images" / "lonely.jpg")
    (tmp_path / "no_mask" / "masks").mkdir()
    (tmp_path / "empty").mkdir()
    _write_pair(tmp_path / "good", "a", (48, 48), [road, land])
    cases = [
        ("wrong_size", "masks/a.png: mask is 48x40 but its image a.jpg is 48x48"),
        ("odd_colours", "masks/a.png: colours not in the palette: (1, 2, 3), (9, 9, 9)"),
        ("no_mask", "images/lonely.jpg: no mask (looked for"),
        ("empty", "empty: folder contains no images"),
    ]
    for folder, message in cases:
        result = run_cli("finetune", "segment", "--images", str(tmp_path / folder), "--palette", "dubai",
                         "--output", str(tmp_path / "run"), "--crop-size", "32", *TINY_ENCODER_FLAGS)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert len(check_pairs(pair_images([tmp_path / "good"], None), load_palette("dubai", None), 255)[0]) == 1
    palette = tmp_path / "p.yaml"
    palette.write_text("classes: {road: [110, 193, 228], land: [132, 41, 246]}\nignore: [[1, 2, 3], [9, 9, 9]]\n")
    labels = read_mask(tmp_path / "odd_colours" / "masks" / "a.png", Palette.from_yaml(palette), 255)
    assert set(np.unique(labels)) == {0, 255}  # colours mapped to ignore are allowed


@pytest.mark.slow
def test_cli_finetune_evaluate_predict_segment(dubai: Path, natural_mae: Path, tmp_path: Path):
    run = tmp_path / "run"
    tiny = ["--crop-size", "64", "--resize", "0.125", "--channels", "32", "--aux-channels", "16",
            "--num-workers", "0", "--device", "cpu"]
    result = run_cli("finetune", "segment", "--images", str(dubai / "tile_1"), "--palette", "dubai",
                     "--val-fraction", "0.25", "--init", str(natural_mae), "--output", str(run), "--epochs", "1",
                     "--batch-size", "4", *tiny)
    assert result.returncode == 0, result.stderr
    assert "pos_embed: fixed sin-cos recomputed" not in result.stderr  # 64 px: the checkpoint's own size
    assert "unexpected (ignored): norm.weight, norm.bias" in result.stderr  # pruned: the pyramid taps blocks
    info = json.loads((run / "segmenter.json").read_text())
    assert info["taps"] == [2, 3, 4, 7] and info["palette"]["classes"][0] == "building"
    evaluated = run_cli("evaluate", "segment", "--checkpoint", str(run), "--device", "cpu")
    assert evaluated.returncode == 0 and evaluated.stdout.startswith("mIoU "), evaluated.stderr
    assert {"miou", "oa", "mean_f1", "per_class", "confusion"} <= set(json.loads((run / "metrics.json").read_text()))
    image = dubai / "tile_1" / "images" / "image_part_002.jpg"
    out = tmp_path / "masks"
    predicted = run_cli("predict", "segment", "--checkpoint", str(run), "--images", str(image), "--output", str(out),
                        "--draw", "--device", "cpu")
    assert predicted.returncode == 0, predicted.stderr
    labels = np.asarray(Image.open(out / "image_part_002.png"))
    assert labels.shape == np.asarray(Image.open(image)).shape[:2] and labels.max() < 5
    assert (out / "image_part_002_color.png").is_file() and (out / "image_part_002_overlay.jpg").is_file()


def test_training_crops_resize_only_the_pixels_under_the_crop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A large tile at scale 2: each sample resizes a crop-sized window, never the whole tile, and the
    mask stays aligned with its image (sweeping every seed of a range, scale and flip included)."""
    import cspt.data.segmentation as segmentation

    size, crop = 1500, 32
    ys, xs = np.mgrid[0:size, 0:size]
    labels = ((xs // 50 + ys // 50) % 3).astype(np.uint8)  # 50 px squares of classes 0, 1, 2
    image = np.repeat((labels * 100)[..., None], 3, axis=-1).astype(np.uint8)  # the class, visible in the pixels
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "big.png")
    Image.fromarray(labels).save(tmp_path / "masks" / "big.png")
    pairs, _ = check_pairs(pair_images([tmp_path / "images"], None), Palette(["a", "b", "c"]), 255)
    contract = PixelContract((0.0,) * 3, (1.0,) * 3)
    dataset = segmentation.SegmentationCrops(pairs, Palette(["a", "b", "c"]), crop, contract,
                                             scale_range=(1.0, 2.0), photometric=False, base_scale=2.0)
    resized: list[tuple[int, ...]] = []
    original = Pixels.resized

    def recording(pixels: Pixels, *args, **kwargs) -> Pixels:
        resized.append(tuple(pixels.image.shape[-2:]))
        return original(pixels, *args, **kwargs)

    monkeypatch.setattr(Pixels, "resized", recording)
    for seed in range(200):
        sample = dataset[(0, seed)]
        mask, pixels = sample["mask"], sample["image"][0]
        assert sample["image"].shape == (3, crop, crop) and mask.dtype == torch.long
        inside = mask != 255
        shown = (pixels[inside] * 255 / 100).round().long()
        # nearest (mask) and bilinear (image) agree away from the squares' edges: nearly everywhere
        assert (shown == mask[inside]).float().mean() > 0.85, seed
    assert len(resized) == 200 and max(h * w for h, w in resized) <= (crop // 2 + 2) ** 2


def test_a_batch_without_labelled_pixels_has_no_loss_rather_than_nan():
    """Crops wholly over pixels without data or outside their region happen (a polygon split, a nodata border):
    their batch teaches nothing, and the mean over the labelled pixels is unchanged otherwise."""
    from cspt.tasks.segment import pixel_loss

    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    masks = torch.full((2, 4, 4), 255)
    loss = pixel_loss(logits, masks, 255)
    loss.backward()
    assert loss.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))
    masks[0, :2] = 1
    masks[1, 3, 1:] = 2
    assert torch.allclose(pixel_loss(logits, masks, 255), torch.nn.functional.cross_entropy(logits, masks,
                                                                                           ignore_index=255))
