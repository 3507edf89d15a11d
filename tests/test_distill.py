"""Teacher-guided MAE: what is compared with what, what trains, and what is saved."""

from __future__ import annotations

import copy

import pytest
import torch

import cspt.models.distill as distill
from cspt.data.unlabelled import ReplayMix
from cspt.models.distill import TeacherGuidedMAE, teacher_tokens
from cspt.models.mae import MaskedAutoencoderViT, masking_order
from cspt.models.vit import build_encoder
from tests.conftest import TINY_ARCH


def test_each_visible_patch_is_compared_with_the_teachers_token_of_the_same_patch(monkeypatch):
    torch.manual_seed(0)
    model = TeacherGuidedMAE(TINY_ARCH, teacher_dim=24, target="tokens")
    images = torch.randn(3, 3, 32, 32)
    guide = torch.randn(3, 16, 24)
    ids_shuffle = masking_order(torch.rand(3, 16))
    seen = {}
    monkeypatch.setattr(distill, "feature_loss",
                        lambda p, t, kind, weights=None: seen.update(p=p, t=t) or (p - p).sum())
    model(images, ids_shuffle=ids_shuffle, teacher_tokens=guide)
    keep = ids_shuffle[:, :4]  # 16 patches at mask 0.75: the first 4 of the order are visible
    assert torch.equal(seen["t"], torch.stack([guide[b, keep[b]] for b in range(3)]))
    tokens, _, _ = model.forward_encoder(images, 0.75, ids_shuffle=ids_shuffle)
    assert torch.allclose(seen["p"], model.distill_head(tokens[:, 1:]), atol=1e-6)
    model.target = "pooled"
    model(images, ids_shuffle=ids_shuffle, teacher_tokens=guide)
    assert torch.allclose(seen["t"], guide.mean(1)) and seen["p"].shape == (3, 24)


@pytest.mark.parametrize("target", ["tokens", "pooled"])
def test_patches_without_data_take_no_part_in_the_distillation(target):
    torch.manual_seed(0)
    model = TeacherGuidedMAE(TINY_ARCH, teacher_dim=24, target=target).eval()
    images, guide = torch.randn(3, 3, 32, 32), torch.randn(3, 16, 24)
    ids_shuffle = masking_order(torch.rand(3, 16))
    valid = torch.ones(3, 32, 32, dtype=torch.bool)
    valid[:, :, :16] = False  # the western half of every image holds no data: patch columns 0-1 of 4
    model(images, ids_shuffle=ids_shuffle, valid=valid, teacher_tokens=guide)
    first = model.last_parts["distill"]
    without_data = torch.zeros(16, dtype=torch.bool).view(4, 4)
    without_data[:, :2] = True
    changed = guide.clone()
    changed[:, without_data.flatten()] += 100.0  # what the teacher says there must not matter
    model(images, ids_shuffle=ids_shuffle, valid=valid, teacher_tokens=changed)
    assert torch.allclose(model.last_parts["distill"], first, atol=1e-6)
    model(images, ids_shuffle=ids_shuffle, teacher_tokens=changed)  # without the mask, it does
    assert not torch.allclose(model.last_parts["distill"], first, atol=1e-3)
    # per band (a replayed photo of another sensor, one band short): no band, no guidance; the loss still learns
    per_band = torch.ones(3, 3, 32, 32, dtype=torch.bool)
    per_band[:, 2, :, :16] = False
    model(images, ids_shuffle=ids_shuffle, valid=per_band, teacher_tokens=guide)
    assert torch.allclose(model.last_parts["distill"], first, atol=1e-6)
    model(images, ids_shuffle=ids_shuffle, valid=per_band, teacher_tokens=changed)
    assert torch.allclose(model.last_parts["distill"], first, atol=1e-6)


def test_the_student_and_projector_learn_to_match_a_frozen_teacher_which_is_never_saved():
    torch.manual_seed(0)
    teacher = build_encoder(TINY_ARCH).eval().requires_grad_(False)
    frozen = copy.deepcopy(teacher.state_dict())
    model = TeacherGuidedMAE(TINY_ARCH, teacher_dim=teacher.embed_dim, block=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    images = torch.randn(4, 3, 32, 32)
    ids_shuffle = masking_order(torch.rand(4, 16, generator=torch.Generator().manual_seed(1)))
    history = []
    for _ in range(40):
        loss, _, _ = model(images, ids_shuffle=ids_shuffle, teacher_tokens=teacher_tokens(teacher, images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(model.last_parts["distill"].item())
        assert loss.item() == pytest.approx(model.last_parts["reconstruction"].item() + history[-1], rel=1e-5)
    assert history[-1] < 0.5 * history[0], history
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    plain = set(MaskedAutoencoderViT(TINY_ARCH).state_dict())
    assert set(model.state_dict()) == plain | {"distill_head.weight", "distill_head.bias"}


def test_replay_draws_its_share_from_the_seed_alone():
    class Named(torch.utils.data.Dataset):
        def __init__(self, name: str, size: int):
            self.name, self.size = name, size

        def __len__(self) -> int:
            return self.size

        def __getitem__(self, item):
            return {"from": self.name, "item": item}

    mix = ReplayMix(Named("target", 100), Named("source", 7), 0.3)
    draws = [mix[(i % 100, seed)] for i, seed in enumerate(range(20_000))]
    share = sum(d["replayed"] for d in draws) / len(draws)
    assert abs(share - 0.3) < 0.02
    assert all(d["from"] == ("source" if d["replayed"] else "target") for d in draws)
    assert {d["item"][0] for d in draws if d["replayed"]} == set(range(7))  # every source image is drawn
    assert all(mix[(5, seed)] == mix[(5, seed)] for seed in range(200))  # a seed gives the same sample
    assert all(d["item"][1] == seed for d, seed in zip(draws, range(20_000)))  # and its own seed, unsalted
    with pytest.raises(Exception, match="replay-fraction"):
        ReplayMix(Named("t", 1), Named("s", 1), 1.0)
