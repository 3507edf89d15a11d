"""Tar shards of an image pool: byte-exact members, reading them like files, and exact resumption."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from cspt.data.files import find_images
from cspt.data.images import image_info
from cspt.data.pixels import read_unit
from cspt.data.shards import expand_braces, make_shards
from cspt.engine.sampler import SeededBatchSampler
from tests.conftest import TINY_FLAGS, run_cli, write_geotiff

FAST = ["--num-workers", "0", "--warmup-epochs", "0", "--vis-every", "0", "--log-every", "1", "--device", "cpu"]


def pool(rsscn7_list, tmp_path: Path) -> list[Path]:
    """24 RSSCN7 JPEGs, an int16 GeoTIFF with a -9999 border and a 16-bit 4-band TIFF."""
    files = [Path(line) for line in rsscn7_list(24).read_text().split()]
    bordered = np.random.default_rng(1).integers(0, 2048, (1, 60, 60)).astype(np.int16)
    bordered[:, :10] = -9999
    landsat = write_geotiff(tmp_path / "landsat.tif", bordered, nodata=-9999)
    scene = tmp_path / "scene.tif"
    tifffile.imwrite(scene, np.random.default_rng(0).integers(0, 4096, (4, 80, 80), dtype=np.uint16),
                     photometric="minisblack", planarconfig="separate")
    return files + [landsat, scene]


def test_members_keep_every_byte_and_read_like_the_files(rsscn7_list, tmp_path):
    files = pool(rsscn7_list, tmp_path)
    shards = make_shards(files, tmp_path / "shards", max_bytes=200_000)
    assert len(shards) > 2 and all(tarfile.is_tarfile(s) for s in shards)
    with tarfile.open(shards[0]) as archive:  # any tar reader opens them
        first = archive.getmembers()[0]
        assert first.name == "000000000.jpg" and archive.extractfile(first).read() == files[0].read_bytes()
    pattern = str(tmp_path / "shards" / f"shard-{{000000..{len(shards) - 1:06d}}}.tar")
    assert expand_braces(pattern) == [str(s) for s in shards]
    members = find_images([pattern])
    assert len(members) == len(files)
    for member, file in zip(members, files, strict=True):
        assert image_info(member) == image_info(file)
        (ours, our_valid), (theirs, their_valid) = read_unit(member), read_unit(file)
        assert np.array_equal(ours, theirs) and np.array_equal(our_valid, their_valid)
    assert read_unit(members[-1])[0].shape == (80, 80, 4)  # 16-bit, four bands, every bit
    valid = read_unit(members[-2])[1]  # a member keeps its nodata: the border is not data
    assert not valid[:10].any() and valid[10:].all()


def test_shard_order_keeps_each_shard_together_and_global_batches_for_any_world_size():
    groups = [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]
    one = SeededBatchSampler(24, 8, seed=1, groups=groups)
    batches = list(one)
    assert sorted(i for b in batches for i, _ in b) == list(range(24))
    assert all(len({i // 8 for i, _ in b}) == 1 for b in batches)  # a batch reads one shard
    two = [SeededBatchSampler(24, 4, seed=1, rank=r, world_size=2, groups=groups) for r in range(2)]
    merged = [a + b for a, b in zip(*[list(s) for s in two], strict=True)]
    assert merged == batches


@pytest.mark.slow
def test_pretraining_on_shards_resumes_exactly(rsscn7_list, tmp_path):
    files = pool(rsscn7_list, tmp_path)[:24]
    shards = make_shards(files, tmp_path / "shards", max_bytes=150_000)
    pattern = str(tmp_path / "shards" / f"shard-{{000000..{len(shards) - 1:06d}}}.tar")
    args = ["pretrain", "--data", pattern, "--epochs", "2", "--batch-size", "8", "--checkpoint-every", "1",
            "--keep-checkpoints", "10", "--seed", "4", *TINY_FLAGS, *FAST]
    reference = tmp_path / "reference"
    result = run_cli(*args, "--output", str(reference))
    assert result.returncode == 0 and "data: 24 files" in result.stderr, result.stderr[-2000:]
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    for path in (resumed / "checkpoints").glob("*.pt"):
        if path.name == "last.pt" or int(path.stem.split("_")[1]) > 4:
            path.unlink()  # as if killed after step 4, mid-way through the second epoch
    again = run_cli(*args, "--output", str(resumed))
    assert again.returncode == 0 and "resuming from" in again.stderr, again.stderr[-2000:]
    want = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["model"]
    got = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_cli_makes_shards(rsscn7_list, tmp_path):
    listing = rsscn7_list(6)
    result = run_cli("shards", "make", str(listing), "--output", str(tmp_path / "out"), "--max-size", "0.05")
    assert result.returncode == 0, result.stderr
    assert "shards:" in result.stdout and len(list((tmp_path / "out").glob("shard-*.tar"))) >= 2
    again = run_cli("shards", "make", str(listing), "--output", str(tmp_path / "out"))
    assert again.returncode == 2 and "already holds shards" in again.stderr
