"""``cspt probe knn|linear``: compare checkpoints on frozen features in seconds to minutes.

Features are the encoder's normed last-block tokens, averaged over patches (or the cls
token), of centre-cropped images. The training split is the kNN memory bank / the
linear probe's training set; the test split (else the validation split) is scored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from timm.optim import Lars
from torch import nn

from cspt.config import ProbeConfig
from cspt.data.classification import LabelledImages, LabelledSet, collate_labelled
from cspt.data.pixels import PixelContract
from cspt.engine.distributed import resolve_device
from cspt.engine.inference import Outputs, run_inference
from cspt.engine.optim import warmup_cosine
from cspt.errors import CsptError
from cspt.metrics import classification_metrics
from cspt.models.classifier import NOT_FOR_CLASSIFIER, pooled_features
from cspt.models.vit import build_encoder, resolve_arch
from cspt.tasks.classify import describe_splits, inference_workers, make_splits, write_evaluation, write_splits
from cspt.tasks.common import checkpoint_contract, source_contract
from cspt.weights.load import load_checkpoint, load_into_model

log = logging.getLogger("cspt")

PROBES = ("knn", "linear")


@dataclasses.dataclass
class FrozenEncoder:
    """An encoder with what its inputs need."""

    model: VisionTransformer
    img_size: int
    contract: PixelContract


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores of ``queries`` from their ``k`` most cosine-similar ``bank`` features.

    Each neighbour votes for its class with weight ``exp(similarity / temperature)``;
    scores are the normalised votes, shape ``(queries, num_classes)``.
    """
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    scores = []
    for start in range(0, len(queries), chunk):
        similarity = F.normalize(queries[start:start + chunk].float(), dim=1) @ bank.T
        top, neighbours = similarity.topk(k, dim=1)
        weights = (top / temperature).exp()
        votes = torch.zeros(len(top), num_classes).scatter_add_(1, bank_labels[neighbours], weights)
        scores.append(votes / votes.sum(1, keepdim=True))
    return torch.cat(scores)


def linear_head(dim: int, num_classes: int) -> nn.Sequential:
    """BatchNorm without affine parameters, then a linear layer (the MAE linear probe)."""
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


def lars_or_sgd(head: nn.Module, optimizer: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with momentum 0.9, or LARS as in MAE's linear probe: the weight matrices take the
    layer-wise trust ratio (and the weight decay) at any weight decay, zero included; biases take neither.

    timm's LARS adapts a group only when its weight decay is non-zero unless told
    ``always_adapt``: at the probe's usual weight decay 0 it would be plain SGD.
    """
    if optimizer != "lars":
        return torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    matrices = [p for p in head.parameters() if p.ndim > 1]
    vectors = [p for p in head.parameters() if p.ndim <= 1]
    return Lars([{"params": matrices, "weight_decay": weight_decay, "always_adapt": True},
                 {"params": vectors, "weight_decay": 0.0, "always_adapt": False}], lr=lr, momentum=0.9)


def train_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int = 90,
                       batch_size: int = 256, blr: float = 0.1, weight_decay: float = 0.0,
                       optimizer: str = "sgd", warmup_epochs: int = 10, seed: int = 0) -> nn.Sequential:
    """Train :func:`linear_head` on cached features: lr = blr x batch / 256, warmup then cosine."""
    torch.manual_seed(seed)
    head = linear_head(features.shape[1], num_classes)
    lr = blr * batch_size / 256
    opt = lars_or_sgd(head, optimizer, lr, weight_decay)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, len(features) // batch_size)
    total, warmup = epochs * steps_per_epoch, min(warmup_epochs, epochs // 2) * steps_per_epoch
    head.train()
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(features), generator=generator)
        batch = order[(step % steps_per_epoch) * batch_size:][:batch_size]
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, total, warmup, lr, 0.0)
        loss = F.cross_entropy(head(features[batch]), labels[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head.eval()


def frozen_encoder(config: ProbeConfig) -> FrozenEncoder:
    """The ``--checkpoint`` encoder (at ``--img-size``), with its normalisation."""
    if not config.checkpoint:
        raise CsptError("no --checkpoint to probe")
    checkpoint = load_checkpoint(config.checkpoint, config.trust_checkpoint)
    arch = resolve_arch({"img_size": config.img_size}, None, checkpoint.arch)
    encoder = build_encoder(arch)
    state = {k: v for k, v in checkpoint.state_dict.items() if not k.startswith(NOT_FOR_CLASSIFIER)}
    report = load_into_model(encoder, dataclasses.replace(checkpoint, state_dict=state))
    for line in report.lines():
        log.info("checkpoint: %s", line)
    contract = checkpoint_contract(checkpoint, arch.in_chans, config.mean, config.std, config.max_image_pixels)
    return FrozenEncoder(encoder, arch.img_size, contract)


def extract_features(encoder: FrozenEncoder, data: LabelledSet, pool: str, device: torch.device,
                     batch_size: int = 256, num_workers: int | None = None, crop_ratio: float = 0.875) -> Outputs:
    """Pooled features of every readable image in ``data`` (unreadable ones are left out and listed)."""
    model = encoder.model.to(device).eval()
    dataset = LabelledImages(data, encoder.contract, encoder.img_size, train=False, crop_ratio=crop_ratio)
    outputs = run_inference(lambda x: pooled_features(model, x, pool), dataset, collate_labelled, batch_size,
                            device, inference_workers(num_workers, device), desc="features")
    for message in outputs.skipped:
        log.warning("skipped unreadable image: %s", message)
    return outputs


def probe_scores(kind: str, bank: Outputs, queries: Outputs, num_classes: int, config: ProbeConfig) -> torch.Tensor:
    """Class scores of the query features, from a kNN vote or a trained linear probe."""
    if len(bank.labels) == 0 or len(queries.labels) == 0:
        raise CsptError("no readable images in the training or evaluation split")
    if kind == "knn":
        return knn_predict(bank.values, bank.labels, queries.values, num_classes, config.k, config.temperature)
    if kind == "linear":
        head = train_linear_probe(bank.values, bank.labels, num_classes, config.epochs, config.batch_size,
                                  config.blr, config.weight_decay, config.optimizer, seed=config.seed)
        with torch.no_grad():
            return head(queries.values).softmax(-1)
    raise CsptError(f"unknown probe '{kind}'; choose one of {', '.join(PROBES)}")


def probe_encoder(kind: str, encoder: FrozenEncoder, splits: dict[str, LabelledSet], config: ProbeConfig,
                  device: torch.device) -> tuple[dict[str, Any], Outputs]:
    """Metrics (OA, AA, kappa, ...) of a ``kind`` probe of ``encoder``, and the scored outputs."""
    evaluated = "test" if "test" in splits else "val"
    features = {name: extract_features(encoder, splits[name], config.pool, device, config.batch_size,
                                       config.num_workers, config.eval_crop_ratio) for name in ("train", evaluated)}
    classes = splits["train"].classes
    scores = probe_scores(kind, features["train"], features[evaluated], len(classes), config)
    queries = dataclasses.replace(features[evaluated], values=scores)
    metrics = classification_metrics(scores.argmax(1), queries.labels, classes)
    metrics.update(probe=kind, split=evaluated, train_images=len(features["train"].labels), pool=config.pool,
                   skipped_images=len(features["train"].skipped) + len(queries.skipped))
    if kind == "knn":
        metrics.update(k=config.k, temperature=config.temperature)
    return metrics, queries


def run_probe(kind: str, config: ProbeConfig) -> dict[str, Any]:
    """Probe ``config.checkpoint``; with ``--output``, write metrics, confusion matrix and splits there."""
    if kind not in PROBES:
        raise CsptError(f"unknown probe '{kind}'; choose one of {', '.join(PROBES)}")
    encoder = frozen_encoder(config)
    splits = make_splits(config)
    log.info("data: %s", describe_splits(splits))
    metrics, queries = probe_encoder(kind, encoder, splits, config, torch.device(resolve_device(config.device)))
    metrics["checkpoint"] = config.checkpoint
    if config.output:
        folder = Path(config.output)
        write_splits(splits, folder / "splits")
        write_evaluation(metrics, queries, splits[metrics["split"]], folder, f"{kind} probe")
        (folder / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    return metrics


class ProbeMonitor:
    """Periodic kNN probes of an encoder during pretraining, and the plateau that ends it.

    ``target`` (and optionally ``source``) are labelled sets, split 50/50 per class once; each is
    read through its own pixel contract (the target's is the run's, the source's its own:
    :func:`~cspt.tasks.common.source_contract`).
    """

    def __init__(self, target: str | None, source: str | None, img_size: int, contract: PixelContract,
                 patience: int = 0):
        if not target:
            raise CsptError("--probe-every needs --probe-target (a labelled ImageFolder or CSV of target images)")
        self.sets = {name: make_splits(ProbeConfig(data=data, train_fraction=0.5))
                     for name, data in (("target", target), ("source", source)) if data}
        self.img_size = img_size
        self.contracts = {"target": contract}
        if "source" in self.sets:
            self.contracts["source"] = source_contract(contract, self.sets["source"]["train"].paths,
                                                       "--probe-source")
        self.patience = patience
        self.best = {"knn_target": -1.0, "epoch": 0, "since": 0}
        self.stop_reason: str | None = None

    def probe(self, model: VisionTransformer, epoch: int) -> dict[str, float]:
        """kNN accuracy on every set; updates the plateau count from the target's."""
        was_training = model.training
        device = next(model.parameters()).device
        results = {f"knn_{name}": probe_encoder("knn", FrozenEncoder(model, self.img_size, self.contracts[name]),
                                                splits, ProbeConfig(num_workers=0), device)[0]["oa"]
                   for name, splits in self.sets.items()}
        model.train(was_training)
        if results["knn_target"] > self.best["knn_target"]:
            self.best = {"knn_target": results["knn_target"], "epoch": epoch + 1, "since": 0}
        else:
            self.best["since"] += 1
        if self.patience and self.best["since"] >= self.patience:
            self.stop_reason = (f"the target kNN probe has not improved for {self.best['since']} probes "
                                f"(best {self.best['knn_target']:.4f} after epoch {self.best['epoch']})")
        return results

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "stop_reason": self.stop_reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.stop_reason = state["best"], state["stop_reason"]
