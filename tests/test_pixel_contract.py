"""The pixel contract: every stage reads, masks, scales, augments and normalises the kinds of rasters users bring
the same way, and invalid pixels stay invalid through every augmentation of every default recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import _RANDOM_INTERPOLATION

from cspt.data.classification import LabelledImages, LabelledSet
from cspt.data.detection import Scene
from cspt.data.masks import Palette
from cspt.data.photometric import photometric_distortion, shift_hue
from cspt.data.pixels import PixelContract, Pixels
from cspt.data.rand_augment import PIXEL_OPS, brightness, color, contrast
from cspt.data.scaling import resolve_scaling
from cspt.data.scene_tiles import DetectionTiles, make_tiles
from cspt.data.segmentation import Pair, SegmentationCrops
from cspt.data.unlabelled import UnlabelledImages, scan_images
from tests.conftest import write_geotiff
from tests.data.generate import FOLDER as DATA
from tests.data.generate import KINDS as RASTERS
from tests.test_rand_augment import level_args

SIZE = 64  #: the test rasters' side
#: every magnitude step timm's level functions can tell apart
MAGNITUDES = [m / 10 for m in range(0, 101)]
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"}
#: how far a normalised pixel may lie from the mean (a ViT sees about +-3)
SIGMAS = 10.0


KINDS = list(RASTERS)


def stage_contract(path: Path) -> PixelContract:
    """The contract a stage makes for these data with the default flags (--scale auto: measured)."""
    bands = 4 if "nan" in path.name else 3
    plain = PixelContract(*(tuple(v) for v in (([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if bands == 3
                                               else ([0.5] * 4, [0.25] * 4))))
    scaling = resolve_scaling("auto", plain, lambda: [path])
    assert scaling is not None and scaling.method.startswith("stats")
    return plain.replace(low=tuple(scaling.low), high=tuple(scaling.high), scaling=scaling.method)


@pytest.fixture(scope="module")
def kinds() -> dict[str, tuple[Path, PixelContract]]:
    """The kinds of rasters users bring (``tests/data/generate.py``), with the contract a stage makes for each."""
    return {kind: (path, stage_contract(path)) for kind, (name, _) in RASTERS.items() for path in [DATA / name]}


def check_sample(image: torch.Tensor, valid: torch.Tensor, where: str, normalised: bool = True,
                 contract: PixelContract | None = None) -> None:
    """Finite; within +-10 sigma; invalid pixels at the normalised zero; not constant where it has data."""
    if not normalised:
        image = torch.where(valid, (image - contract.mean_tensor) / contract.std_tensor, image - contract.mean_tensor)
    assert torch.isfinite(image).all(), where
    assert image.abs().max() <= SIGMAS, f"{where}: {image.abs().max():.1f} sigma"
    assert (image[:, ~valid] == 0).all(), f"{where}: invalid pixels are not at the normalised zero"
    if int(valid.sum()) >= 16:  # enough data to have texture: our inputs have it everywhere
        assert image[:, valid].std(1).max() > 1e-3, f"{where}: constant sample"


def test_invalid_pixels_are_named_by_the_file_the_value_nan_and_the_contract(tmp_path):
    pixels = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8) + 100
    pixels[0, 0, 0] = np.nan  # one band NaN: the whole pixel is invalid
    pixels[2, 1, 1] = np.inf
    pixels[:, 2, 2] = -1.0  # the file's own nodata
    pixels[1, 3, 3] = 7.0  # a value the user names
    path = write_geotiff(tmp_path / "x.tif", pixels, nodata=-1.0)
    contract = PixelContract((0.5,) * 3, (0.25,) * 3, nodata=7.0)
    read = contract.read(path)
    invalid = {tuple(p) for p in torch.nonzero(~read.valid).tolist()}
    assert invalid == {(0, 0), (1, 1), (2, 2), (3, 3)}
    assert (read.image[:, ~read.valid] == 0.5).all() and torch.isfinite(read.image).all()
    assert (contract.normalise(read)[:, ~read.valid] == 0).all()


def test_nodata_named_by_the_user_is_masked_by_every_reader_of_8_bit_pictures(tmp_path):
    """A black-bordered RGB JPEG/PNG under ``--nodata 0``: the fast reduced-decode crop (pretraining,
    classification training) masks the border as evaluation's full read does, and device decoding stands aside."""
    from cspt.data.unlabelled import UnlabelledImages, scan_images

    picture = np.full((64, 64, 3), 120, np.uint8)
    picture[:, :32] = 0
    for name in ("black.png", "black.jpg"):
        Image.fromarray(picture).save(tmp_path / name, quality=100)
        contract = PixelContract((0.5,) * 3, (0.25,) * 3, nodata=0.0)
        whole = contract.read(tmp_path / name)
        crop = contract.read_resized_crop(tmp_path / name, (0, 0, 64, 64), 32)
        assert whole.valid.float().mean() == pytest.approx(0.5, abs=0.05), name
        assert crop.valid.float().mean() == pytest.approx(0.5, abs=0.1), name
    pool = UnlabelledImages(scan_images([tmp_path / "black.jpg"], 128).entries, contract, 32, 8, 128,
                            decode_on_device=True)
    assert not pool.decode_on_device


@pytest.mark.parametrize("kind", KINDS)
def test_every_randaugment_op_at_every_magnitude_keeps_range_texture_and_invalid_pixels(kinds, kind):
    path, contract = kinds[kind]
    pixels = contract.read(path)
    for name, op in sorted(PIXEL_OPS.items()):
        filters = _RANDOM_INTERPOLATION if name in GEOMETRIC else _RANDOM_INTERPOLATION[:1]
        for magnitude in MAGNITUDES:
            for negate in (False, True):
                args = level_args(name, magnitude, negate, translate_const=28)
                for resample in filters:
                    where = f"{kind}: {name}{args} m={magnitude} filter {resample}"
                    out = op(pixels, *args, fillcolor=contract.mean, resample=resample)
                    check_sample(contract.normalise(out), out.valid, where)
                    if name in GEOMETRIC:  # a pixel is valid only where the op moved a valid one
                        moved = op(Pixels(pixels.valid[None].float(), torch.ones_like(pixels.valid)), *args,
                                   fillcolor=(0.0,), resample=0)
                        assert not (out.valid & (moved.image[0] < 0.5)).any(), where
                    else:
                        assert torch.equal(out.valid, pixels.valid), where


@pytest.mark.parametrize("kind", KINDS)
def test_every_photometric_op_at_every_magnitude_keeps_range_texture_and_invalid_pixels(kinds, kind):
    path, contract = kinds[kind]
    pixels = contract.read(path)
    grid = torch.linspace(0, 1, 11).tolist()
    ops = [(f"brightness {f:.3f}", lambda p, f=0.875 + 0.25 * u: brightness(p, f)) for u in grid for f in [u]]
    ops += [(f"contrast {u}", lambda p, f=0.5 + u: contrast(p, f)) for u in grid]
    ops += [(f"saturation {u}", lambda p, f=0.5 + u: color(p, f)) for u in grid]
    ops += [(f"hue {u}", lambda p, h=-0.05 + 0.1 * u: shift_hue(p, h)) for u in grid]
    ops += [(f"distortion seed {s}", lambda p, s=s: photometric_distortion(p, torch.Generator().manual_seed(s)))
            for s in range(20)]
    for name, op in ops:
        out = op(pixels)
        check_sample(contract.normalise(out), out.valid, f"{kind}: {name}")
        assert torch.equal(out.valid, pixels.valid), name


@pytest.mark.parametrize("kind", KINDS)
def test_every_default_recipe_s_samples_on_real_kinds_of_rasters(kinds, kind, tmp_path):
    """Pretraining, classification (RandAugment + erasing), segmentation and detection samples with their
    default augmentation, many seeds each."""
    path, contract = kinds[kind]
    unlabelled = UnlabelledImages(scan_images([path], 16).entries, contract, 32, 8, 16)  # tiles of a scene
    whole = UnlabelledImages(scan_images([path], 64).entries, contract, 32, 8, 64)  # the image itself
    labelled = LabelledImages(LabelledSet([path, path], [0, 1], ["a", "b"]), contract, 32, train=True,
                              rand_augment="rand-m9-mstd0.5-inc1", reprob=0.25)
    mask = tmp_path / "mask.png"
    from PIL import Image

    Image.fromarray((np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 3).astype(np.uint8)).save(mask)
    crops = SegmentationCrops([Pair(path, mask, SIZE, SIZE)], Palette(["a", "b", "c"]), 32, contract)
    scene = Scene(path, SIZE, SIZE, np.array([[30, 10, 50, 30]], np.float32), ["tree"], np.zeros(1, bool))
    tiles = DetectionTiles([scene], make_tiles([scene], 32, 8, contract=contract), ["tree"], 32, contract,
                           photometric=True)
    for seed in range(40):
        for name, dataset in (("pretrain tiles", unlabelled), ("pretrain", whole)):
            sample = dataset[(seed % len(dataset), seed)]
            check_sample(sample["image"], sample["valid"], f"{kind}: {name} seed {seed}")
        sample = labelled[(seed % 2, seed)]
        check_sample(sample["image"], sample["valid"], f"{kind}: classify seed {seed}")
        sample = crops[(seed % len(crops), seed)]
        check_sample(sample["image"], sample["valid"], f"{kind}: segment seed {seed}")
        assert (sample["mask"][~sample["valid"]] == 255).all()
        tile = tiles[(seed % len(tiles), seed)]
        check_sample(tile["image"], tile["valid"], f"{kind}: detect seed {seed}", normalised=False, contract=contract)


def test_detection_never_trains_on_objects_over_pixels_without_data(tmp_path):
    from tests.conftest import write_geotiff

    pixels = np.full((3, 64, 64), 500, np.int16)
    pixels[:, :, :32] = -9999  # the western half holds no data
    path = write_geotiff(tmp_path / "half.tif", pixels, nodata=-9999)
    boxes = np.array([[4, 10, 20, 26], [40, 10, 56, 26], [24, 40, 44, 56]], np.float32)  # nodata, data, 60% data
    scene = Scene(path, 64, 64, boxes, ["over nodata", "over data", "mostly data"], np.zeros(3, bool))
    contract = PixelContract((0.5,) * 3, (0.25,) * 3, low=(0.0,) * 3, high=(1000 / 32767,) * 3)
    classes = ["over nodata", "over data", "mostly data"]
    tiles = DetectionTiles([scene], make_tiles([scene], 64, 0, contract=contract), classes, 64, contract,
                           augment=False)
    taught = tiles[(0, 0)]["target"]
    assert [classes[i - 1] for i in taught["labels"].tolist()] == ["over data", "mostly data"]


def test_segmentation_never_trains_on_pixels_without_data(kinds, tmp_path):
    path, contract = kinds["int16 with -9999 borders"]
    from PIL import Image

    mask = tmp_path / "mask.png"
    Image.fromarray(np.ones((SIZE, SIZE), np.uint8)).save(mask)  # a label everywhere, the border included
    crops = SegmentationCrops([Pair(path, mask, SIZE, SIZE)], Palette(["a", "b"]), 32, contract)
    border = 0
    for seed in range(60):
        sample = crops[(0, seed)]
        unlabelled = sample["mask"] == 255
        assert (sample["image"][:, unlabelled] == 0).all()
        border += int(unlabelled.sum())
    assert border > 0  # the crops did reach the border, and learnt nothing there


def test_no_pixel_state_lives_in_the_environment_or_in_module_settings():
    """The band selection, nodata and pixel limit are arguments (the contract), never process-wide settings."""
    source = Path(__file__).resolve().parents[1] / "src" / "cspt" / "data"
    for module in sorted(source.glob("*.py")):
        assert "os.environ" not in module.read_text(), module.name
    import inspect

    from cspt.data import classification, scene_tiles, segmentation, unlabelled

    for dataset in (unlabelled.UnlabelledImages, classification.LabelledImages, segmentation.SegmentationCrops,
                    scene_tiles.DetectionTiles):
        assert "contract" in inspect.signature(dataset).parameters, dataset.__name__


def test_the_contract_round_trips_and_reads_what_older_releases_recorded():
    contract = PixelContract((0.4, 0.5), (0.2, 0.3), bands=(4, 2), low=(0.01, 0.02), high=(0.2, 0.3),
                             nodata=-9999.0, scaling="stats of 3 image(s)")
    assert PixelContract.from_dict(contract.to_dict()) == contract
    legacy = PixelContract.from_description({"mean": [0.4, 0.5], "std": [0.2, 0.3], "bands": [4, 2],
                                             "scale_low": [0.01, 0.02], "scale_high": [0.2, 0.3]})
    assert (legacy.bands, legacy.low, legacy.high) == (contract.bands, contract.low, contract.high)
    with pytest.raises(Exception, match="newer than this cspt reads"):
        PixelContract.from_dict({**contract.to_dict(), "version": 99}, "model.json")
    with pytest.raises(Exception, match="bands of scaling for 2 bands"):
        PixelContract((0.4, 0.5), (0.2, 0.3), low=(0.1,), high=(0.2,))


def test_automatic_scaling_measures_the_images_a_labelled_csv_names(tmp_path):
    """``--data labels.csv`` (classification) and ``--images pairs.csv`` (segmentation) of 11-bit data: the scaling
    is measured on the images the CSV names, as it is for a folder (it once fell back to the dtype scale)."""
    from cspt.config import ClassifyConfig, SegmentConfig
    from cspt.tasks.classify import resolve_config as resolve_classify
    from cspt.tasks.segment import resolve_config as resolve_segment

    eleven = DATA / RASTERS["11-bit uint16"][0]
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\n{eleven},field\n{eleven},road\n")
    tiny = {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32}
    classify = resolve_classify(ClassifyConfig(data=str(labels), output=str(tmp_path / "c"), **tiny))
    mask = tmp_path / "mask.png"
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(mask)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"image,mask\n{eleven},{mask}\n")
    segment = resolve_segment(SegmentConfig(images=[str(pairs)], class_names=["a", "b"], crop_size=32,
                                            output=str(tmp_path / "s"), **{k: v for k, v in tiny.items()
                                                                          if k != "img_size"}))
    for config in (classify, segment):
        assert config.scale_low and config.scale_high, config.scale
        assert max(config.scale_high) < 0.05  # 11-bit data: its top is about 2047 / 65535 on the dtype scale


def test_an_alpha_band_is_said_once_per_folder_with_how_to_read_it_as_data(tmp_path, caplog):
    """GDAL marks the fourth band of a 4-band byte TIFF alpha unless told otherwise; RGB + near-infrared tiles
    would lose their NIR band without a word."""
    import logging

    import rasterio
    from affine import Affine

    from cspt.data.images import image_info

    for name in ("a.tif", "b.tif"):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", height=16, width=16, count=4, dtype="uint8",
                           crs="EPSG:32640", transform=Affine(1, 0, 0, 0, -1, 16), photometric="RGB",
                           alpha="YES") as dst:
            dst.write(np.full((4, 16, 16), 9, np.uint8))
    with caplog.at_level(logging.WARNING, logger="cspt"):
        infos = [image_info(tmp_path / name) for name in ("a.tif", "b.tif", "a.tif")]
    assert all(info.bands == 3 and info.alpha for info in infos)
    said = [r.getMessage() for r in caplog.records if "alpha" in r.getMessage()]
    assert len(said) == 1 and str(tmp_path) in said[0] and "--bands 1 2 3 4" in said[0], said


def test_fine_tuning_reads_the_bands_and_nodata_its_encoder_was_pretrained_with_unless_told(tmp_path):
    import dataclasses

    from cspt.config import SegmentConfig
    from cspt.models.vit import build_encoder
    from cspt.tasks.common import resolved_encoder_fields
    from cspt.weights.load import Checkpoint
    from tests.conftest import TINY_ARCH

    pretrained = PixelContract((0.5,) * 3, (0.25,) * 3, bands=(3, 2, 1), nodata=0.0)
    init = Checkpoint(tmp_path / "encoder.safetensors", "cspt", build_encoder(TINY_ARCH).state_dict(),
                      described={"pixels": pretrained.to_dict()})
    config = SegmentConfig(images=[str(tmp_path)], class_names=["a", "b"], output=str(tmp_path / "run"))
    inherited = resolved_encoder_fields(config, init)
    assert inherited["bands"] == ["3", "2", "1"] and inherited["nodata"] == 0.0
    told = resolved_encoder_fields(dataclasses.replace(config, bands=[1, 2, 3], nodata=-1.0), init)
    assert "bands" not in told and "nodata" not in told  # the flags given stay as given
