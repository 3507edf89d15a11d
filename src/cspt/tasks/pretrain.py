"""Consecutive MAE pretraining: resolve the config, build model and data, train, export.

``pretrain(config)`` is the whole stage as one call; the CLI only builds the config.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from cspt.config import PretrainConfig
from cspt.data.bands import BandFeed, band_feed, file_bands, stand_ins
from cspt.data.bands import describe as describe_bands
from cspt.data.device_decode import decode_batch
from cspt.data.files import find_images
from cspt.data.images import ImageReadError
from cspt.data.normalisation import default_normalisation
from cspt.data.pixels import PixelContract
from cspt.data.sampling import largest_box
from cspt.data.unlabelled import (
    MAX_NODATA_SHARE,
    ReplayMix,
    UnlabelledImages,
    collate,
    collate_for_device,
    evaluation_images,
    is_tiled,
    scan_images,
)
from cspt.data.windows import window_starts
from cspt.engine.trainer import Task, Trainer
from cspt.errors import CsptError
from cspt.models.distill import TeacherGuidedMAE, teacher_tokens
from cspt.models.mae import DECODER_PREFIXES, MaskedAutoencoderViT, mask_noise_length, masking_order, noise_groups
from cspt.models.vit import build_encoder, resolve_arch
from cspt.plots import reconstruction_grid, save_grid
from cspt.tasks.common import (
    arch_of,
    check_normalisation,
    checkpoint_bands,
    config_bands,
    contract_of,
    distributed_run,
    images_in,
    load_init_weights,
    recorded_contract,
    resolved_encoder_fields,
    source_contract,
    start_run,
)
from cspt.weights.export import lineage_of, sha256_of, write_weights
from cspt.weights.load import Checkpoint, checkpoint_file, load_checkpoint, load_into_model

if TYPE_CHECKING:
    from cspt.tasks.probe import ProbeMonitor

log = logging.getLogger("cspt")

VIS_IMAGES = 8
#: fixed crops of --eval-data the held-out MAE loss is measured on
HELDOUT_IMAGES = 32
#: held-out windows read to find windows with data: at most this many times the crops wanted
REPLACEMENT_READS = 4
GOLDEN = (5**0.5 - 1) / 2  #: spreads the other windows evenly over the grid, whatever their number
#: the held-out MAE loss per epoch (0: before training), in a pretraining run
HELDOUT_FILE = "heldout.json"


def resolve_config(config: PretrainConfig, init: Checkpoint | None = None) -> PretrainConfig:
    """Fill every "decide later" field: architecture (flags > preset > ``init`` shapes), mean/std, tiles.

    A fresh student guided by a teacher (``--distill-from`` without ``--init``) takes the teacher's shape
    and statistics unless flags say otherwise.
    """
    if init is None and config.distill_from:
        init = load_checkpoint(config.distill_from, config.trust_checkpoint)
        log.info("architecture and normalisation of the fresh student: the teacher's, %s", config.distill_from)
    fields = resolved_encoder_fields(config, init, images_in(list(config.data)))
    if config.distill_from and fields["band_groups"]:
        raise CsptError("--band-groups with --distill-from is not supported: the teacher's tokens are one per patch")
    return dataclasses.replace(config, **fields, tile_size=config.tile_size or 4 * fields["img_size"])


def with_masking_order(collate_fn: Callable[[list[dict]], dict], groups: int, samples: list[dict]) -> dict:
    """The batch, with its masking order (``groups`` blocks of noise each sorted on its own) sorted in the
    loader, off the training device's critical path."""
    batch = collate_fn(samples)
    return {**batch, "ids_shuffle": masking_order(batch["noise"], groups)}


def fixed_crops(contract: PixelContract, sources: Sequence[str | Path], tile_size: int, img_size: int,
                noise_length: int, limit: int = HELDOUT_IMAGES) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The crops pretraining measures its MAE loss on: a regular grid of windows half as wide and high as the
    largest crop training takes (from a tile of a scene larger than twice ``tile_size``, else from the whole
    image; its aspect cut to 3/4-4/3), so at the scale of a small training crop, over every image of
    ``sources``; at most ``limit`` of them spread evenly, each resized to ``img_size`` and normalised; their
    valid masks, and fixed mask noise (``noise_length`` values a crop, the model's ``mask_noise_length``; seed
    0), so every measurement sees the same crops and masks.

    Windows mostly without data (which training skips) give way to other windows, themselves spread over the
    grid, read at most ``REPLACEMENT_READS`` x ``limit`` in all; only where no window has data are empty ones
    measured. Unreadable files and windows are left out, as training skips them."""
    boxes = []
    for path in find_images(list(sources)):
        try:
            info = contract.info(path)
        except ImageReadError:
            continue
        tiled = is_tiled(info, tile_size)
        source = (min(tile_size, info.height), min(tile_size, info.width)) if tiled else (info.height, info.width)
        size = tuple(-(-side // 2) for side in largest_box(*source))  # half, rounded up
        tops, lefts = window_starts(info.height, size[0], size[0]), window_starts(info.width, size[1], size[1])
        boxes += [(path, (top, left, *size)) for top in tops for left in lefts]
    count = min(len(boxes), limit)
    spread = [round(i * len(boxes) / count) for i in range(count)]
    chosen = set(spread)
    others = sorted((i for i in range(len(boxes)) if i not in chosen), key=lambda i: (i * GOLDEN) % 1)
    kept, empty, unreadable, reads = [], [], set(), 0
    for index in spread + others:  # the spread ones first, then others spread too
        if len(kept) == count or reads == REPLACEMENT_READS * limit:
            break
        if boxes[index][0] in unreadable:
            continue
        reads += 1
        try:
            crop = contract.read(*boxes[index]).resized([img_size, img_size])
        except ImageReadError:
            unreadable.add(boxes[index][0])
            continue
        if float(crop.valid.float().mean()) >= 1 - MAX_NODATA_SHARE:
            kept.append((index, crop))
        else:
            empty.append(index)
    if not kept:
        kept = [(i, contract.read(*boxes[i]).resized([img_size, img_size])) for i in empty[:count]]
    if not kept:
        raise CsptError(f"{', '.join(map(str, sources))}: no readable image to measure the MAE loss on")
    crops = [crop for _, crop in sorted(kept, key=lambda pair: pair[0])]
    images = torch.stack([contract.normalise(crop) for crop in crops])
    noise = torch.rand(len(images), noise_length, generator=torch.Generator().manual_seed(0))
    return images, torch.stack([crop.valid for crop in crops]), noise


def with_mask_draws(crops: tuple[torch.Tensor, torch.Tensor, torch.Tensor], measurements: int = HELDOUT_IMAGES,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`fixed_crops` measured under several fixed masks each when they are few (at most half of
    ``measurements``): every crop repeated ``measurements // crops`` times, each repeat with its own mask noise
    (seed 0; the first draw is :func:`fixed_crops`'s). One 200 px image gives four windows; one mask each is too
    small a sample of the MAE loss to see it move."""
    images, valid, noise = crops
    draws = max(1, measurements // len(images))
    if draws == 1:
        return crops
    noise = torch.rand(draws * len(images), noise.shape[1], generator=torch.Generator().manual_seed(0))
    return images.repeat(draws, 1, 1, 1), valid.repeat(draws, 1, 1), noise


class PretrainTask(Task):
    """MAE on unlabelled images, for the :class:`~cspt.engine.Trainer`."""

    def __init__(self, config: PretrainConfig, init: Checkpoint | None = None):
        self.config = config
        self.arch = arch_of(config)
        self.init = init  #: the loaded --init checkpoint, released once the model has it
        self.dataset: UnlabelledImages | None = None
        self.counts = {"drawn": 0, "nodata": 0, "replayed": 0}  #: this epoch's samples: drawn, nodata, replayed
        self.teacher: VisionTransformer | None = None  #: the frozen --distill-from encoder (never saved)
        self.teacher_contract: PixelContract | None = None  #: how the teacher's inputs are normalised
        self.teacher_bands: list[int] | None = None  #: the student's bands the teacher sees (None: all)
        self.noise_groups = noise_groups(self.arch, config.group_masking)  #: blocks of mask noise a sample draws

    def build_model(self, load_init: bool) -> nn.Module:
        cfg = self.config
        if cfg.distill_from:
            self.teacher, self.teacher_contract, self.teacher_bands = load_teacher(cfg)
            model = TeacherGuidedMAE(self.arch, self.teacher.embed_dim, cfg.mask_ratio, cfg.norm_pix_loss,
                                     cfg.distill_target, cfg.distill_block, cfg.distill_loss, cfg.distill_weight)
        else:
            model = MaskedAutoencoderViT(self.arch, cfg.mask_ratio, cfg.norm_pix_loss, cfg.group_masking)
        if load_init:
            load_init_weights(model, self.config, self.init, data_files=images_in(list(self.config.data)))
        self.init = None
        return model

    @functools.cached_property
    def contract(self) -> PixelContract:
        return contract_of(self.config)

    def train_data(self) -> tuple[UnlabelledImages, Any]:
        cfg = self.config
        files = find_images(cfg.data, exclude=[cfg.output])
        scan = scan_images(files, cfg.tile_size)
        for message in scan.unreadable:
            log.warning("skipped unreadable image: %s", message)
        log.info("data: %d files, %d samples per epoch%s%s", len(files), cfg.samples_per_epoch or len(scan.entries),
                 ", each file alike" if cfg.sample_by == "files" else "",
                 f", {len(scan.unreadable)} unreadable files skipped" if scan.unreadable else "")
        check_normalisation(list(dict.fromkeys(entry.path for entry in scan.entries)), self.contract,
                            self.dist.is_main)
        on_device = cfg.decode_on == "device"
        self.dataset = UnlabelledImages(scan.entries, self.contract, cfg.img_size, cfg.patch_size, cfg.tile_size,
                                        cfg.min_scale, on_device, cfg.samples_per_epoch, cfg.sample_by,
                                        self.noise_groups)
        self.files = files
        dataset = self.with_replay(self.dataset) if cfg.replay else self.dataset
        if on_device and not self.dataset.decode_on_device:
            log.info("--decode-on device: only 3-band JPEGs read with every band decode on the device; these "
                     "images load as before")
        return dataset, functools.partial(with_masking_order,
                                          collate_for_device if self.dataset.decode_on_device else collate,
                                          self.noise_groups)

    def with_replay(self, target: UnlabelledImages) -> ReplayMix:
        """The target images with ``--replay-fraction`` of the samples drawn from ``--replay`` instead, each
        read through its own pixel contract (:func:`~cspt.tasks.common.source_contract`); a pool of another
        sensor through its :func:`replay_band_map`, its images without those bands (grey ones) left out."""
        cfg = self.config
        scan = scan_images(find_images(cfg.replay), cfg.tile_size)
        for message in scan.unreadable:
            log.warning("skipped unreadable replay image: %s", message)
        feed = replay_band_map(self.contract, [e.path for e in scan.entries if e.info.bands > 1], cfg.replay_sensor)
        if feed is not None:
            entries = [entry for entry in scan.entries if entry.info.bands >= max(feed.read)]
            if len(entries) < len(scan.entries):
                log.warning("replay: %d image(s) with fewer than %d bands left out (grey?)",
                            len(scan.entries) - len(entries), max(feed.read))
            scan = dataclasses.replace(scan, entries=entries)
        contract = source_contract(self.contract, list(dict.fromkeys(e.path for e in scan.entries)), "--replay",
                                   feed)
        if target.decode_on_device and (feed is not None or (contract.low, contract.high) != (self.contract.low,
                                                                                               self.contract.high)):
            raise CsptError("--replay with --decode-on device needs the target and the replay images on the same "
                            "scale (--scale dtype for both) and bands: the device scales a batch with one contract")
        log.info("replay: %d source samples, %.0f%% of every batch on average; pixels: %s", len(scan.entries),
                 100 * cfg.replay_fraction, contract.describe())
        source = UnlabelledImages(scan.entries, contract, cfg.img_size, cfg.patch_size, cfg.tile_size,
                                  cfg.min_scale, target.decode_on_device, noise_groups=self.noise_groups)
        return ReplayMix(target, source, cfg.replay_fraction, feed.feeds if feed else None)

    def training_step(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        self.counts["nodata"] += batch["nodata_windows"]
        self.counts["drawn"] += len(batch["noise"]) + batch["nodata_windows"]
        self.counts["replayed"] += batch["replayed"]
        images, valid = self.batch_images(batch, device)
        ids_shuffle = batch["ids_shuffle"].to(device, non_blocking=True)
        if self.teacher is None:
            return model(images, ids_shuffle=ids_shuffle, valid=valid)[0]
        self.teacher.to(device)
        guide = teacher_tokens(self.teacher, self.teacher_inputs(images, valid), self.config.distill_block)
        return model(images, ids_shuffle=ids_shuffle, valid=valid, teacher_tokens=guide)[0]

    def teacher_inputs(self, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The student's normalised batch as the teacher's contract normalises it (the same 0-1 pixels of the
        bands the teacher sees, the teacher's mean/std; invalid pixels 0)."""
        student, teacher = self.contract, self.teacher_contract
        if self.teacher_bands is None and (student.mean, student.std) == (teacher.mean, teacher.std) \
                and valid.dim() == 3:
            return images
        pixels = student.unnormalise(images)
        if self.teacher_bands is not None:
            pixels = pixels[:, self.teacher_bands]
        mean, std = teacher.mean_tensor.to(images.device), teacher.std_tensor.to(images.device)
        if valid.dim() == 4:  # per band (a replay of another sensor): the teacher needs data in the bands it sees
            valid = (valid if self.teacher_bands is None else valid[:, self.teacher_bands]).all(1)
        return (pixels - mean) / std * valid[:, None]

    def loss_parts(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return getattr(model, "module", model).last_parts if self.teacher is not None else {}

    def batch_images(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's normalised images and valid masks on ``device`` (decoded there with
        ``--decode-on device``)."""
        if not isinstance(batch["image"], list):
            return batch["image"].to(device, non_blocking=True), batch["valid"].to(device, non_blocking=True)
        images, valid, failed = decode_batch(batch["image"], batch["valid"], batch["flip"], self.arch.img_size,
                                             self.contract, device)
        for message in failed:
            log.warning("replaced an undecodable image by another of its batch: %s", message)
        return images, valid

    def _write_reconstructions(self, model: MaskedAutoencoderViT, name: str, run_dir: Path) -> None:
        images, _ = evaluation_images(self.dataset, VIS_IMAGES)
        noise = torch.rand(len(images), self.dataset.noise_length, generator=torch.Generator().manual_seed(0))
        device = next(model.parameters()).device
        grid = reconstruction_grid(model, images.to(device), self.contract, noise.to(device))
        save_grid(grid, run_dir / "reconstructions" / f"{name}.png")

    @functools.cached_property
    def measured_crops(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The held-out crops (``--eval-data``), and crops of the pool by the same rule for comparison (each under
        several masks where they are few)."""
        cfg = self.config
        return {name: with_mask_draws(fixed_crops(self.contract, sources, cfg.tile_size, cfg.img_size,
                                                  mask_noise_length(self.arch, cfg.group_masking)))
                for name, sources in (("heldout", cfg.eval_data), ("pool", cfg.data))}

    @torch.no_grad()
    def evaluate_heldout(self, model: nn.Module, epoch: int, run_dir: Path) -> float:
        """The MAE loss on the held-out crops and on the pool's (same crops and masks every time), appended to
        ``heldout.json``; the held-out reconstructions as ``reconstructions/heldout_epoch_NNNN.png``."""
        net = getattr(model, "module", model)
        device = next(net.parameters()).device
        was_training = net.training
        net.eval()
        losses = {}
        for name, crops in self.measured_crops.items():
            images, valid, noise = (t.to(device) for t in crops)
            losses[name] = float(net(images, noise=noise, valid=valid)[0])
            if name == "heldout":
                save_grid(reconstruction_grid(net, images[:VIS_IMAGES // 2], self.contract, noise[:VIS_IMAGES // 2]),
                          run_dir / "reconstructions" / f"heldout_epoch_{epoch:04d}.png")
        net.train(was_training)
        record = run_dir / HELDOUT_FILE
        history = json.loads(record.read_text()) if record.is_file() else []
        entry = {"epoch": epoch, "mae_loss": losses["heldout"], "pool_mae_loss": losses["pool"]}
        record.write_text(json.dumps([h for h in history if h["epoch"] < epoch] + [entry], indent=2) + "\n")
        log.info("MAE loss at epoch %d: held-out %.4f (%s), pool %.4f (the same crops and masks every time)", epoch,
                 losses["heldout"], ", ".join(self.config.eval_data), losses["pool"])
        return losses["heldout"]

    def on_fit_start(self, model: nn.Module, run_dir: Path) -> None:
        if self.config.vis_every:
            self._write_reconstructions(model, "epoch_0000", run_dir)
        if self.config.eval_data:
            self.evaluate_heldout(model, 0, run_dir)

    def on_epoch_end(self, model: nn.Module, epoch: int, run_dir: Path) -> dict[str, Any] | None:
        cfg = self.config
        if self.counts["nodata"] and self.dist.is_main:
            nodata, drawn = self.counts["nodata"], self.counts["drawn"]
            log.info("nodata: %d of the %d scene windows drawn this epoch were mostly nodata and skipped (%.1f%%)",
                     nodata, drawn, 100 * nodata / drawn)
        if cfg.replay and self.dist.is_main:
            log.info("replay: %d of this process's samples this epoch were source images",
                     self.counts["replayed"])
        self.counts = {"drawn": 0, "nodata": 0, "replayed": 0}
        shown = cfg.vis_every and ((epoch + 1) % cfg.vis_every == 0 or epoch + 1 == cfg.epochs)
        metrics = {}
        if self.dist.is_main and shown:
            self._write_reconstructions(model, f"epoch_{epoch + 1:04d}", run_dir)
        if self.dist.is_main and cfg.eval_data and (shown or epoch + 1 == cfg.epochs):
            metrics["val_mae_loss"] = self.evaluate_heldout(model, epoch + 1, run_dir)
        if cfg.probe_every and ((epoch + 1) % cfg.probe_every == 0 or epoch + 1 == cfg.epochs):
            metrics.update(self.monitor.probe(model, epoch))  # every process extracts its share of the features
        return metrics or None

    @functools.cached_property
    def monitor(self) -> ProbeMonitor:
        from cspt.tasks.probe import ProbeMonitor

        cfg = self.config
        return ProbeMonitor(cfg.probe_target, cfg.probe_source, cfg.img_size, self.contract,
                            cfg.stop_on_plateau)

    def stop_reason(self) -> str | None:
        return self.monitor.stop_reason if self.config.probe_every else None

    def state_dict(self) -> dict[str, Any]:
        state = {"monitor": self.monitor.state_dict()} if self.config.probe_every else {}
        return {**state, "teacher": teacher_identity(self.config)} if self.config.distill_from else state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
        if "teacher" in state and state["teacher"] != teacher_identity(self.config):
            raise CsptError(f"{self.config.distill_from}: not the teacher this run was trained with "
                            f"(sha256 {state['teacher']['sha256'][:12]}...): resuming would not be exact")

    def on_fit_end(self, model: nn.Module, run_dir: Path) -> None:
        if not self.dist.is_main:
            return
        parents = lineage_of(self.config.init) if self.config.init else []
        export_encoder(model, self.config, run_dir, len(self.files), parents)


@functools.cache
def teacher_identity_of(path: str) -> dict[str, Any]:
    """The path of a teacher and the sha256 of its weights file (hashed once per process)."""
    return {"path": path, "sha256": sha256_of(checkpoint_file(Path(path)))}


def teacher_identity(config: PretrainConfig) -> dict[str, Any]:
    """The ``--distill-from`` file's path and sha256 (what checkpoints and the lineage keep of the teacher)."""
    return teacher_identity_of(str(config.distill_from))


def replay_band_map(target: PixelContract, files: Sequence[Path], sensor: str | None) -> BandFeed | None:
    """Which replay bands feed which model bands: each replay band the model band nearest it in wavelength
    (within 0.1 um), the others masked out; None when the replay images have the model's bands (in its order),
    carry no description of theirs, or are grey. Read from the first of ``files`` (the readable images of more
    than one band)."""
    if not files:
        return None
    first = files[0]
    available = file_bands(first, sensor)
    described = any(b.kind != "unknown" for b in available)
    if len(available) == target.in_chans and (not described or not target.spectral):
        return None
    if not target.spectral:
        raise CsptError(f"--replay: {first} has {len(available)} band(s), the model {target.in_chans} whose bands are "
                        "not described (--sensor or --band-names/--wavelengths say what they are)")
    feed = band_feed(target.spectral, available)
    if feed is None:
        raise CsptError(f"--replay: no band of {first} ({describe_bands(available)}) lies within 0.1 um of the "
                        f"model's ({describe_bands(target.spectral)}); --replay-sensor says what its bands are")
    if len(available) == target.in_chans and feed.feeds == tuple(range(target.in_chans)) \
            and feed.read == tuple(range(1, target.in_chans + 1)):
        return None
    log.info("replay: model bands fed by %s", ", ".join(
        f"{band.name}={available[feed.read[f] - 1].name if f is not None else 'masked'}"
        for band, f in zip(target.spectral, feed.feeds)))
    return feed


def load_teacher(config: PretrainConfig) -> tuple[VisionTransformer, PixelContract, list[int] | None]:
    """The frozen ``--distill-from`` encoder at the student's input size (same patch grid), in eval mode, the
    pixel contract it was trained with (its normalisation applies to the student's pixels), and the student's
    bands it sees (0-based; None: all, as they are): a teacher of other bands sees the student's bands nearest
    its own in wavelength (an RGB teacher, a multispectral student's red, green and blue)."""
    checkpoint = load_checkpoint(config.distill_from, config.trust_checkpoint)
    arch = resolve_arch({"img_size": config.img_size}, None, checkpoint.arch)
    student = config_bands(config)
    teacher_bands = checkpoint_bands(checkpoint)
    seen = None
    if teacher_bands and student and (arch.in_chans != config.in_chans or list(teacher_bands) != list(student)):
        found = stand_ins(teacher_bands, student)
        seen = None if None in found else found
    if seen is None and arch.in_chans != config.in_chans:
        raise CsptError(f"{config.distill_from}: the teacher takes {arch.in_chans} band(s) "
                        f"({describe_bands(teacher_bands) if teacher_bands else 'not described'}), the student "
                        f"{config.in_chans} ({describe_bands(student) if student else 'not described'}; --bands "
                        f"{' '.join(map(str, config.bands or [])) or 'all'} of {', '.join(map(str, config.data[:2]))})"
                        ": no student band lies within 0.1 um of each teacher band (--sensor or --wavelengths say "
                        "what the bands are)")
    if seen is not None:
        log.info("teacher: sees the student's bands %s", ", ".join(f"{student[i].name} for {band.name}"
                                                                  for i, band in zip(seen, teacher_bands)))
    if arch.patch_size != config.patch_size:
        raise CsptError(f"{config.distill_from}: the teacher's patches are {arch.patch_size} px, the student's "
                        f"{config.patch_size}: their tokens do not correspond")
    if config.distill_block is not None and config.distill_block >= arch.depth:
        raise CsptError(f"--distill-block {config.distill_block}: the teacher has {arch.depth} blocks")
    teacher = build_encoder(arch)
    state = {k: v for k, v in checkpoint.state_dict.items() if not k.startswith(DECODER_PREFIXES)}
    for line in load_into_model(teacher, dataclasses.replace(checkpoint, state_dict=state)).lines():
        log.info("teacher: %s", line)
    contract = recorded_contract(checkpoint) or PixelContract(*map(tuple, default_normalisation(arch.in_chans)))
    log.info("teacher: normalises the student's pixels with mean %s, std %s", list(contract.mean),
             list(contract.std))
    return teacher.eval().requires_grad_(False), contract, seen


def export_encoder(model: MaskedAutoencoderViT, config: PretrainConfig, run_dir: Path, images: int,
                   parents: list[dict[str, Any]]) -> Path:
    """Write ``encoder.safetensors`` (timm ViT names) and ``encoder.json`` (config and lineage)."""
    stage = {"stage": "consecutive MAE pretraining", "run": str(run_dir), "data": list(config.data),
             "images": images, "epochs": config.epochs, "config": dataclasses.asdict(config)}
    if config.distill_from:
        stage["teacher"] = teacher_identity(config)
    info = {"architecture": arch_of(config).to_dict(), "format": "timm", "pixels": contract_of(config).to_dict(),
            "lineage": parents + [stage]}
    if config.band_groups:
        info["group_masking"] = config.group_masking
    target = write_weights(model.state_dict(), run_dir / "encoder.safetensors", info)
    log.info("exported the encoder to %s", target)
    return target


def pretrain(config: PretrainConfig, resume: str | Path | bool | None = None,
             overrides: dict[str, Any] | None = None) -> Path:
    """Run (or continue) consecutive pretraining; returns the run directory.

    ``resume``: a run directory or training checkpoint to continue (``True``: the
    config's output). Without it, a run directory that already holds checkpoints of
    the same settings is continued automatically.
    """
    config, run_dir, init = start_run(PretrainConfig, config, resume, overrides, resolve_config)
    with distributed_run(config, run_dir) as dist:
        Trainer(config, run_dir, dist).fit(PretrainTask(config, init))
    return run_dir
