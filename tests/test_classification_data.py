"""Labelled data: ImageFolder/CSV sources, stratified splits, label fractions, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torchmetrics.functional.classification import multiclass_cohen_kappa

from cspt.data.classification import LabelledImages, LabelledSet, keep_label_fraction, read_labelled, stratified_split
from cspt.errors import CsptError
from cspt.metrics import classification_metrics
from cspt.tasks.probe import knn_predict, lars_or_sgd, train_linear_probe
from tests.conftest import neutral_contract, write_rgb


def test_metrics_match_hand_computed_values():
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 1, 1, 2, 2])
    metrics = classification_metrics(predictions, targets, ["a", "b", "c"])
    assert metrics["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert metrics["oa"] == pytest.approx(4 / 6)
    assert metrics["aa"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # p_o = 4/6; p_e = (3*2 + 2*2 + 1*2) / 36 = 1/3; kappa = (2/3 - 1/3) / (2/3) = 0.5
    assert metrics["kappa"] == pytest.approx(0.5)
    assert metrics["kappa"] == pytest.approx(multiclass_cohen_kappa(predictions, targets, 3).item())
    assert metrics["per_class"]["b"] == pytest.approx({"recall": 0.5, "precision": 0.5, "f1": 0.5, "support": 2})
    perfect = classification_metrics(targets, targets, ["a", "b", "c"])
    assert (perfect["oa"], perfect["aa"], perfect["kappa"]) == (1.0, 1.0, 1.0)


def test_stratified_split_is_deterministic_stratified_and_disjoint(rsscn7: Path):
    data = read_labelled(rsscn7)
    assert data.classes == sorted(p.name for p in rsscn7.iterdir() if p.is_dir()) and len(data) == 2450
    first = stratified_split(data, {"train": 0.2, "val": 0.1}, seed=3, source=rsscn7)
    again = stratified_split(data, {"train": 0.2, "val": 0.1}, seed=3, source=rsscn7)
    other = stratified_split(data, {"train": 0.2, "val": 0.1}, seed=4, source=rsscn7)
    assert {k: v.paths for k, v in first.items()} == {k: v.paths for k, v in again.items()}
    assert first["train"].paths != other["train"].paths
    assert first["train"].counts() == [70] * 7 and first["val"].counts() == [35] * 7
    assert first["test"].counts() == [245] * 7
    sets = [set(split.paths) for split in first.values()]
    assert sum(map(len, sets)) == len(set().union(*sets)) == 2450  # disjoint and complete
    fewer = keep_label_fraction(first["train"], 0.1, seed=0)
    assert fewer.counts() == [7] * 7 and set(fewer.paths) <= set(first["train"].paths)


def test_csv_source_and_class_order(tmp_path: Path):
    for name, seed in (("b.png", 0), ("a.png", 1), ("c.png", 2)):
        write_rgb(tmp_path / "img" / name, seed=seed)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nimg/b.png,water\nimg/a.png,field\n\nimg/c.png,water\n")
    data = read_labelled(csv)
    assert data.classes == ["field", "water"] and data.labels == [1, 0, 1]
    assert read_labelled(csv, ["water", "field", "urban"]).labels == [0, 1, 0]
    with pytest.raises(CsptError, match="not among the model's classes"):
        read_labelled(csv, ["water", "urban"])


@pytest.mark.parametrize("case, message", [
    ("one_class", "found 1 class .*needs at least 2"),
    ("loose_images", "no class sub-folders .*own sub-folder"),
    ("missing_file", r"labels.csv:3: no such image gone.png"),
    ("short_row", r"labels.csv:2: expected path,label"),
])
def test_bad_sources_name_the_file(tmp_path: Path, case: str, message: str):
    if case == "one_class":
        write_rgb(tmp_path / "data" / "forest" / "a.png")
        source = tmp_path / "data"
    elif case == "loose_images":
        write_rgb(tmp_path / "data" / "a.png")
        source = tmp_path / "data"
    else:
        write_rgb(tmp_path / "a.png")
        source = tmp_path / "labels.csv"
        rows = "a.png,x\ngone.png,y\n" if case == "missing_file" else "a.png\n"
        source.write_text("path,label\n" + rows)
    with pytest.raises(CsptError, match=message) as err:
        read_labelled(source)
    assert str(source) in str(err.value) and "\n" not in str(err.value)


def test_label_fraction_and_split_too_small_are_refused(tmp_path: Path):
    data = LabelledSet([tmp_path / f"{i}.png" for i in range(6)], [0, 0, 0, 0, 1, 1], ["big", "small"])
    with pytest.raises(CsptError, match="leaves class small"):
        keep_label_fraction(data, 0.2, seed=0)
    with pytest.raises(CsptError, match="class small has 2 images, too few"):
        stratified_split(data, {"train": 0.5, "val": 0.25}, seed=0, source="d")


def test_multiband_tiffs_and_unreadable_images(tmp_path: Path):
    rng = np.random.default_rng(0)
    for cls in ("crop", "urban"):
        for i in range(2):
            (tmp_path / cls).mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / cls / f"{i}.tif", rng.integers(0, 65535, (4, 40, 40), dtype=np.uint16),
                             photometric="minisblack", planarconfig="separate")
    (tmp_path / "urban" / "broken.tif").write_bytes(b"II*\x00garbage")
    data = read_labelled(tmp_path)
    contract = neutral_contract(4)
    train = LabelledImages(data, contract, 32, train=True, reprob=0.5)
    sample = train[(4, 123)]  # the broken file: replaced by another sample, and reported
    assert sample["image"].shape == (4, 32, 32) and sample["skipped"] and "broken.tif" in sample["skipped"][0]
    assert torch.equal(train[(0, 7)]["image"], train[(0, 7)]["image"])  # seeded augmentation
    evaluation = LabelledImages(data, contract, 32, train=False)
    assert evaluation[(4, 0)]["image"] is None  # evaluation never replaces: it skips and counts
    augmented = LabelledImages(data, contract, 32, train=True, rand_augment="rand-m9-mstd0.5-inc1")
    images = torch.stack([augmented[(0, seed)]["image"] for seed in range(8)])  # any band count
    assert images.shape == (8, 4, 32, 32) and torch.isfinite(images).all() and images.std() > 0.1


def test_knn_and_linear_probe_on_separable_features():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=generator) * 4
    labels = torch.arange(3).repeat_interleave(40)
    features = centres[labels] + torch.randn(120, 16, generator=generator)
    train, test = torch.arange(0, 120, 2), torch.arange(1, 120, 2)
    scores = knn_predict(features[train], labels[train], features[test], 3, k=5)
    assert scores.shape == (60, 3) and torch.allclose(scores.sum(1), torch.ones(60))
    assert (scores.argmax(1) == labels[test]).float().mean() > 0.95
    head = train_linear_probe(features[train], labels[train], 3, epochs=30, batch_size=16, blr=0.5)
    with torch.no_grad():
        assert (head(features[test]).argmax(1) == labels[test]).float().mean() > 0.95


def test_lars_adapts_every_weight_matrix_at_weight_decay_zero():
    """MAE's LARS: each weight matrix moves by lr x 0.001 x its norm per step (momentum aside), biases by
    plain SGD; timm's LARS without ``always_adapt`` would have been SGD for both at weight decay 0."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 3)
    features, labels = torch.randn(32, 16), torch.randint(0, 3, (32,))
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    optimizer = lars_or_sgd(head, "lars", lr=0.5, weight_decay=0.0)
    torch.nn.functional.cross_entropy(head(features), labels).backward()
    grads = {n: p.grad.clone() for n, p in head.named_parameters()}
    optimizer.step()
    moved = head.weight.detach() - before["weight"]
    assert torch.allclose(moved.norm(), 0.5 * 1e-3 * before["weight"].norm(), rtol=1e-4)
    assert torch.allclose(head.bias.detach() - before["bias"], -0.5 * grads["bias"], atol=1e-7)
