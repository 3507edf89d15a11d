"""Finding and reading images, skipping broken ones, tiling scenes, seeded sampling, band stats."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from cspt.data.files import find_images
from cspt.data.images import ImageReadError, image_info
from cspt.data.pixels import PixelContract, read_unit
from cspt.data.stats import band_statistics
from cspt.data.unlabelled import UnlabelledImages, collate, scan_images
from cspt.engine.sampler import SeededBatchSampler
from cspt.errors import CsptError
from tests.conftest import neutral_contract, write_rgb


def read_image(path, window=None):
    return read_unit(path, window)[0]


def make_dataset(files, img_size=32, in_chans=3, tile_size=128):
    scan = scan_images(files, tile_size)
    return scan, UnlabelledImages(scan.entries, neutral_contract(in_chans), img_size, 8, tile_size)


def test_find_images_recursive_and_lists(tmp_path):
    a = write_rgb(tmp_path / "set" / "a.jpg")
    b = write_rgb(tmp_path / "set" / "sub" / "b.png")
    (tmp_path / "set" / "notes.md").write_text("not an image")
    assert find_images([tmp_path / "set"]) == [a, b]
    listing = tmp_path / "list.txt"
    listing.write_text("# my images\nset/sub/b.png\n\n")
    assert find_images([listing]) == [tmp_path / "set" / "sub" / "b.png"]


def test_find_images_follows_symlinked_folders_once(tmp_path):
    """A folder of links to where the imagery lives (a common way to assemble a dataset) is searched; a link
    back up the tree does not loop."""
    store = write_rgb(tmp_path / "store" / "tile.png").parent
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "site_a").symlink_to(store, target_is_directory=True)
    (tmp_path / "store" / "back").symlink_to(tmp_path / "dataset", target_is_directory=True)
    assert find_images([tmp_path / "dataset"]) == [tmp_path / "dataset" / "site_a" / "tile.png"]


@pytest.mark.parametrize("case,message", [("missing", "no such file or folder"),
                                          ("empty", "folder contains no images"),
                                          ("badlist", "no such image")])
def test_find_images_errors_name_the_path(tmp_path, case, message):
    target = tmp_path / case
    if case == "empty":
        target.mkdir()
    elif case == "badlist":
        target = tmp_path / "list.txt"
        target.write_text("gone.jpg\n")
    with pytest.raises(CsptError, match=message) as err:
        find_images([target])
    assert str(target) in str(err.value)


def test_sixteen_bit_single_band_tiff_is_read_to_unit_scale(tmp_path):
    pixels = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    path = tmp_path / "dem.tif"
    tifffile.imwrite(path, pixels)
    assert image_info(path).bands == 1
    out = read_image(path)
    assert out.shape == (2, 2, 1) and out.dtype == np.float32
    assert np.allclose(out[..., 0], pixels / 65535.0)


def test_multiband_tiff_planar_and_windows(tmp_path):
    bands = np.arange(13 * 40 * 50, dtype=np.uint16).reshape(13, 40, 50)
    path = tmp_path / "s2.tif"
    tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="separate")
    info = image_info(path)
    assert (info.height, info.width, info.bands) == (40, 50, 13)
    window = read_image(path, (5, 7, 10, 20))
    assert window.shape == (10, 20, 13)
    assert np.allclose(window[..., 4], bands[4, 5:15, 7:27] / 65535.0)


def test_truncated_jpeg_is_skipped_and_reported(tmp_path, rsscn7):
    good = sorted((rsscn7).rglob("*.jpg"))[:6]
    broken = tmp_path / "broken.jpg"
    data = good[0].read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    scan, dataset = make_dataset(good + [broken], img_size=32)
    assert len(dataset) == 7  # the header is fine; decoding fails
    with pytest.raises(ImageReadError):
        read_image(broken)
    sample = dataset[(6, 123)]
    assert sample["image"].shape == (3, 32, 32)
    assert len(sample["skipped"]) == 1 and str(broken) in sample["skipped"][0]


def test_unreadable_header_is_skipped_at_scan(tmp_path):
    good = write_rgb(tmp_path / "good.png")
    fake = tmp_path / "fake.jpg"
    fake.write_text("not a jpeg")
    scan = scan_images([good, fake], tile_size=128)
    assert len(scan.entries) == 1 and str(fake) in scan.unreadable[0]


def test_single_band_images_feed_a_three_band_model_and_other_counts_are_skipped(tmp_path):
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, (np.random.default_rng(0).random((64, 64)) * 65535).astype(np.uint16))
    four = tmp_path / "four.tif"
    tifffile.imwrite(four, np.zeros((4, 64, 64), dtype=np.uint8), photometric="minisblack", planarconfig="separate")
    _, dataset = make_dataset([grey, four])
    image = dataset[(0, 1)]["image"]
    assert image.shape == (3, 32, 32) and torch.equal(image[0], image[1])
    sample = dataset[(1, 5)]
    assert any("has 4 bands, the model takes 3" in m for m in sample["skipped"])


def test_large_scene_is_sampled_as_tiles_without_pretiling(tmp_path):
    scene = tmp_path / "scene.tif"
    tifffile.imwrite(scene, (np.random.default_rng(1).random((600, 500, 3)) * 255).astype(np.uint8))
    small = write_rgb(tmp_path / "small.png", size=100)
    scan, dataset = make_dataset([scene, small], tile_size=128)
    assert len(dataset) == (600 // 128) * (500 // 128) + 1
    windows = {dataset.random_window(dataset.entries[0].info, torch.Generator().manual_seed(s)) for s in range(5)}
    assert len(windows) == 5 and all(h == w == 128 for _, _, h, w in windows)
    assert dataset[(0, 7)]["image"].shape == (3, 32, 32)


def test_samples_depend_only_on_their_seed(tmp_path):
    files = [write_rgb(tmp_path / f"{i}.png", seed=i) for i in range(4)]
    _, dataset = make_dataset(files)
    a, b, c = dataset[(2, 99)], dataset[(2, 99)], dataset[(2, 100)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["noise"], b["noise"])
    assert not torch.equal(a["noise"], c["noise"])
    batch = collate([a, c])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["noise"].shape == (2, 16)


def test_an_epoch_shorter_than_the_pool_reaches_every_image_over_the_epochs(tmp_path):
    """``--samples-per-epoch`` below the number of images: each sample draws its image with its own seed, so
    the images past the first N are trained on too (they once never were)."""
    from cspt.engine.sampler import SeededBatchSampler

    files = [write_rgb(tmp_path / f"{i:02d}.png", size=40, seed=i) for i in range(20)]
    scan = scan_images(files, 128)
    dataset = UnlabelledImages(scan.entries, neutral_contract(), 32, 8, 128, samples_per_epoch=5)
    reached = set()
    for epoch in range(12):
        sampler = SeededBatchSampler(len(dataset), 5, seed=0)
        sampler.set_epoch(epoch)
        for batch in sampler:
            reached.update(dataset.entry_of(index, torch.Generator().manual_seed(seed)) for index, seed in batch)
    assert len(dataset) == 5 and len(reached) >= 18, sorted(reached)
    full = UnlabelledImages(scan.entries, neutral_contract(), 32, 8, 128, samples_per_epoch=45)
    drawn = [full.entry_of(index, torch.Generator()) for index in range(45)]
    assert sorted(set(drawn)) == list(range(20)) and max(map(drawn.count, set(drawn))) == 3  # balanced


def test_threaded_loading_gives_the_batches_of_loader_processes(tmp_path):
    from cspt.engine.distributed import DistContext
    from cspt.engine.loading import ThreadedBatches, training_batches

    files = [write_rgb(tmp_path / f"{i}.jpg", size=40 + 8 * i, seed=i) for i in range(12)]
    _, dataset = make_dataset(files)
    sampler = SeededBatchSampler(len(dataset), 4, seed=5)
    cpu = DistContext(0, 1, 0, torch.device("cpu"))
    threaded = training_batches(dataset, sampler, collate, None, cpu)
    processes = training_batches(dataset, sampler, collate, 2, cpu)
    assert isinstance(threaded, ThreadedBatches) and processes.num_workers == 2
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        ours, theirs = list(threaded), list(processes)
        assert len(ours) == len(theirs) == 3
        for a, b in zip(ours, theirs):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["noise"], b["noise"])


def test_global_batches_are_the_same_for_any_world_size():
    single = SeededBatchSampler(50, 8, seed=3)
    ranks = [SeededBatchSampler(50, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        split = [a + b for a, b in zip(*[list(r) for r in ranks])]
        assert list(single) == split and len(split) == 6
    single.set_epoch(1, start_batch=4)
    assert list(single) == split[4:]
    with pytest.raises(CsptError, match="fewer than one global batch"):
        SeededBatchSampler(5, 4, seed=0, world_size=2)


def test_band_statistics_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(3)]
    files = []
    for i, array in enumerate(arrays):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(array).save(files[-1])
    stats = band_statistics(files)
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]) / 255.0
    assert np.allclose(stats.mean, pixels.mean(0), atol=1e-6)
    assert np.allclose(stats.std, pixels.std(0), atol=1e-6)


def test_windows_of_a_compressed_tiff(tmp_path):
    pixels = (np.random.default_rng(2).random((300, 200, 4)) * 65535).astype(np.uint16)
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, np.moveaxis(pixels, -1, 0), compression="zlib", photometric="minisblack",
                     planarconfig="separate")
    window = read_image(path, (10, 20, 30, 40))
    assert np.allclose(window, pixels[10:40, 20:60] / 65535.0)
    assert read_image(path).shape == (300, 200, 4)


def test_random_boxes_follow_random_resized_crop_rules():
    from cspt.data.sampling import random_box

    generator = torch.Generator().manual_seed(0)
    for height, width in [(256, 256), (120, 300), (64, 48)]:
        for _ in range(200):
            top, left, h, w = random_box(height, width, 0.2, generator)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            assert 0.2 * height * width * 0.9 <= h * w <= height * width
            assert 0.7 <= w / h <= 1.4  # 3/4 to 4/3, up to rounding to whole pixels
    assert random_box(10, 100, 0.9, generator) == (0, 43, 10, 13)  # nothing fits: torchvision's central 4/3 box


def test_reduced_decode_crop_matches_full_decode_and_resize(rsscn7, tmp_path):
    """The PIL fast path (DCT-scaled JPEG decode, one resize) against a full decode + torchvision resize."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    from cspt.data.images import read_resized

    jpeg = sorted((rsscn7 / "aGrass").glob("*.jpg"))[0]
    png = tmp_path / "same.png"
    Image.open(jpeg).save(png)
    full = torch.from_numpy(read_image(jpeg)).permute(2, 0, 1)
    for path in (jpeg, png):
        for box in [(10, 20, 200, 180), (0, 0, 256, 256), (100, 50, 90, 110)]:
            fast = torch.from_numpy(read_resized(path, box, 64).copy()).permute(2, 0, 1) / 255
            top, left, h, w = box
            reference = TF.resized_crop(full, top, left, h, w, [64, 64], InterpolationMode.BICUBIC, antialias=True)
            assert fast.shape == (3, 64, 64)
            assert (fast - reference).abs().mean() < 0.02, (path.name, box)
    assert read_resized(tmp_path / "x.tif", (0, 0, 8, 8), 4) is None  # TIFFs take the windowed path
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(jpeg.read_bytes()[:600])
    with pytest.raises(ImageReadError, match="cut.jpg: cannot decode image"):
        read_resized(truncated, (0, 0, 128, 128), 64)


def test_pixel_limit_is_cspt_s_own_and_leaves_pil_s_guard_alone(tmp_path, monkeypatch):
    """Importing cspt changes no process-wide PIL setting; cspt reads past PIL's guard up to its own limit."""
    import subprocess
    import sys

    probe = "import PIL.Image as I; before = I.MAX_IMAGE_PIXELS; import cspt.cli, cspt.data.images; " \
            "print(before == I.MAX_IMAGE_PIXELS, I.MAX_IMAGE_PIXELS)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True" and out[1] != "None"
    path = tmp_path / "wide.png"
    Image.new("L", (3000, 400)).save(path)  # 1.2 Mpx
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300_000)  # PIL itself would refuse it (over twice its limit)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    assert read_image(path).shape == (400, 3000, 1)  # within cspt's own default limit
    limited = PixelContract((0.5,), (0.25,), max_image_pixels=1_000_000)  # the limit is an argument, not a setting
    with pytest.raises(ImageReadError, match="wide.png: 3000 x 400 pixels, more than --max-image-pixels"):
        limited.read(path)
    assert read_image(path).shape == (400, 3000, 1)  # nothing process-wide changed
    assert Image.MAX_IMAGE_PIXELS == 300_000


@pytest.mark.slow
def test_an_error_raised_in_a_loader_process_reaches_the_user_as_one_line(tmp_path, rsscn7):
    """Every image truncated after its header: a loader process gives up on a batch with a CsptError."""
    from tests.conftest import run_cli

    jpeg = next(rsscn7.rglob("*.jpg")).read_bytes()
    (tmp_path / "data").mkdir()
    for i in range(24):
        (tmp_path / "data" / f"{i}.jpg").write_bytes(jpeg[:len(jpeg) // 3])
    result = run_cli("pretrain", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run"),
                     "--epochs", "1", "--batch-size", "4", "--num-workers", "1", "--device", "cpu", "--vis-every", "0",
                     "--embed-dim", "64", "--depth", "2", "--num-heads", "2", "--patch-size", "8", "--img-size", "32")
    assert result.returncode == 2, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("cspt: error:")]
    assert len(error) == 1 and "Original Traceback" not in result.stderr and "Traceback" not in result.stderr
    assert "unreadable images in a row" in error[0] and "image file is truncated" in error[0], error
