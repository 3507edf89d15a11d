"""MAE pretraining throughput: cspt's MaskedAutoencoderViT against Hugging Face ViTMAEForPreTraining.

Both models get the identical configuration (ViT-B/16 at 224 px by default, mask 0.75,
norm-pix loss, decoder 512 x 8), the same batch and masks, and the same AdamW step.
Timed runs alternate between the two in one process after warm-up; peak memory is
measured for each in a child process of its own (RSS on CPU, max_memory_allocated on
GPU). Prints img/s, peak memory and ``ratio: X.XX`` (cspt img/s over HF img/s, median
over the pairs).

    python benchmarks/pretrain_throughput.py                  # fp32 on all CPU threads
    python benchmarks/pretrain_throughput.py --device cuda    # bf16 autocast
    python benchmarks/pretrain_throughput.py --model tiny --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from cspt.engine.optim import adamw
from cspt.engine.trainer import flush_denormals_on_cpu
from cspt.models import MaskedAutoencoderViT
from cspt.models.vit import VIT_PRESETS, resolve_arch

MILLION_AID = 1_000_000


def build(name: str, size: str, device: str, decoder_heads: int | None = None) -> torch.nn.Module:
    arch = resolve_arch({"img_size": 224, "patch_size": 16, "decoder_num_heads": decoder_heads}, f"vit_{size}")
    if name == "cspt":
        return MaskedAutoencoderViT(arch, mask_ratio=0.75, norm_pix_loss=True).to(device)
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(
        hidden_size=arch.embed_dim, num_hidden_layers=arch.depth, num_attention_heads=arch.num_heads,
        intermediate_size=arch.embed_dim * 4, image_size=224, patch_size=16, qkv_bias=True,
        decoder_hidden_size=arch.decoder_dim, decoder_num_hidden_layers=arch.decoder_depth,
        decoder_num_attention_heads=arch.decoder_num_heads, decoder_intermediate_size=arch.decoder_dim * 4,
        mask_ratio=0.75, norm_pix_loss=True, layer_norm_eps=1e-6, attn_implementation="sdpa")
    return ViTMAEForPreTraining(config).to(device)


class Runner:
    """One model with its optimizer; ``step()`` is forward + backward + AdamW."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.device = args.device
        flush_denormals_on_cpu(torch.device(args.device))  # as the cspt engine does (process-wide: both gain)
        self.model = build(name, args.model, args.device, args.decoder_heads).train()
        if args.compile:
            self.model = torch.compile(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = adamw([{"params": params, "weight_decay": 0.05, "lr": 1e-4}], (0.9, 0.95))  # cspt's, for both
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(args.batch_size, 3, 224, 224, generator=generator).to(args.device)
        self.noise = torch.rand(args.batch_size, 196, generator=generator).to(args.device)
        self.autocast = torch.autocast("cuda", torch.bfloat16, enabled=args.device == "cuda")

    def step(self) -> None:
        with self.autocast:
            if self.name == "cspt":
                loss = self.model(self.images, noise=self.noise)[0]
            else:
                loss = self.model(pixel_values=self.images, noise=self.noise).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed(self, steps: int) -> float:
        """Images per second over ``steps`` steps."""
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        return steps * len(self.images) / (time.perf_counter() - start)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


#: the operators whose time is the matrix products (linear layers, attention) of a step and their gradients
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention",
              "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_flash_attention_backward",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::_efficient_attention_forward",
              "aten::_efficient_attention_backward", "aten::convolution_backward", "aten::mkldnn_convolution",
              "aten::_scaled_dot_product_cudnn_attention", "aten::_scaled_dot_product_cudnn_attention_backward")


def matmul_share(runner: Runner) -> tuple[float, float]:
    """One profiled step: its seconds, and the share of them spent in matrix products."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        runner.step()
        runner.sync()
        seconds = time.perf_counter() - start
    attr = "self_device_time_total" if runner.device == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, attr) for e in events)
    matmul = sum(getattr(e, attr) for e in events if e.key in MATMUL_OPS)
    return seconds, matmul / total


def peak_memory_mb(args: argparse.Namespace) -> float:
    """Peak memory of a few steps of ``args.only`` (run in its own process)."""
    runner = Runner(args.only, args)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        runner.step()
    runner.sync()
    if args.device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flops_per_image(size: str) -> float:
    """Training FLOPs per image (3 x forward), counting matmuls: 2 FLOPs per multiply-add."""
    arch = resolve_arch({"img_size": 224, "patch_size": 16}, f"vit_{size}")
    visible, tokens = 1 + 49, 1 + 196

    def blocks(n: int, dim: int, depth: int) -> float:
        return depth * (24 * n * dim**2 + 4 * n**2 * dim)

    forward = (2 * 196 * 768 * arch.embed_dim * 0.25 + blocks(visible, arch.embed_dim, arch.depth)
               + 2 * visible * arch.embed_dim * arch.decoder_dim
               + blocks(tokens, arch.decoder_dim, arch.decoder_depth) + 2 * tokens * arch.decoder_dim * 768)
    return 3 * forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="base", choices=[k.removeprefix("vit_") for k in VIT_PRESETS])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 128 on GPU")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--pairs", type=int, default=3, help="alternating (cspt, HF) pairs")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak, to report MFU")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one step of each: the share of its time in matrix products")
    parser.add_argument("--decoder-heads", type=int, help="decoder attention heads of both models (default 16 "
                        "of 32 dims; 8 gives flash attention 64-dim heads)")
    parser.add_argument("--only", choices=["cspt", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch_size = args.batch_size or (128 if args.device == "cuda" else 16)
    if args.only:
        print(json.dumps({"peak_mb": peak_memory_mb(args)}))
        return

    memory = {}
    for name in ("cspt", "hf"):
        child = subprocess.run([sys.executable, *sys.argv, "--only", name], capture_output=True, text=True, check=True)
        memory[name] = json.loads(child.stdout.strip().splitlines()[-1])["peak_mb"]
    runners = {name: Runner(name, args) for name in ("cspt", "hf")}
    for runner in runners.values():
        for _ in range(args.warmup):
            runner.step()
    speeds: dict[str, list[float]] = {"cspt": [], "hf": []}
    for _ in range(args.pairs):
        for name, runner in runners.items():
            speeds[name].append(runner.timed(args.steps))
    ratios = [a / b for a, b in zip(speeds["cspt"], speeds["hf"], strict=True)]

    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu
    print(f"device: {device}; torch {torch.__version__}; ViT-{args.model[0].upper()}/16 224 px, "
          f"batch {args.batch_size}, {'bf16 autocast' if args.device == 'cuda' else 'fp32'}"
          f"{', compiled' if args.compile else ''}")
    for name in ("cspt", "hf"):
        line = f"{name:>5}: {statistics.median(speeds[name]):8.2f} img/s (runs: " + \
               ", ".join(f"{s:.2f}" for s in speeds[name]) + f"), peak memory {memory[name]:.0f} MiB"
        if args.peak_tflops:
            mfu = statistics.median(speeds[name]) * flops_per_image(args.model) / (args.peak_tflops * 1e12)
            line += f", MFU {100 * mfu:.1f}% of {args.peak_tflops:g} TFLOP/s"
        print(line)
    print(f"ratio: {statistics.median(ratios):.2f}")
    if args.profile:
        shares = {}
        for name, runner in runners.items():
            seconds, shares[name] = matmul_share(runner)
            print(f"{name:>5}: profiled step {seconds:.2f} s, {100 * shares[name]:.1f}% of operator time in "
                  "matrix products")
        print("with the same matrix products, a model whose other operators took no time at all would be at most "
              f"1 / HF's share = {1 / shares['hf']:.2f}x as fast as HF")
    hours = MILLION_AID / statistics.median(speeds["cspt"]) / 3600
    print(f"one epoch over {MILLION_AID:,} images (MillionAID-sized) at cspt's rate: {hours:.2f} h on this device, "
          f"{60 * hours / 8:.1f} min on 8 of them at linear scaling; 400 epochs on 8: {400 * hours / 8:.1f} h")


if __name__ == "__main__":
    main()
