"""Fast checkpoint comparisons on frozen features: kNN votes and a linear probe."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import nn

from cspt.engine.optim import warmup_cosine


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
