"""Dataclass configs: defaults, YAML files and command-line overrides, in that order.

Every field is also a command-line flag (``batch_size`` -> ``--batch-size``) and a YAML
key of the same (underscored) name. Fields whose default is ``None`` mean "decide
later" (from a preset, from the ``--init`` checkpoint, or from the machine).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cspt.errors import CsptError

C = TypeVar("C", bound="TrainConfig")
#: what an optional text option may be given as to mean "none" (e.g. ``--rand-augment none``)
NONE_WORDS = ("none", "null")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field with the help text its command-line flag shows."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """What the training engine needs, whatever the task."""

    output: str | None = option(None, "run directory (checkpoints, logs, exports)")
    epochs: int = option(100, "number of epochs")
    batch_size: int = option(64, "images per device per step (before accumulation)")
    accum_iter: int = option(1, "gradient accumulation steps per optimizer step")
    blr: float = option(1.5e-4, "base learning rate: lr = blr * effective_batch / 256")
    lr: float | None = option(None, "absolute learning rate (overrides --blr)")
    min_lr: float = option(0.0, "learning rate at the end of the cosine schedule")
    warmup_epochs: float = option(5.0, "epochs of linear warmup")
    lr_schedule: str = option("cosine", "after warmup: half a cosine, or poly (linear decay, power 1)",
                              choices=["cosine", "poly"])
    weight_decay: float = option(0.05, "AdamW weight decay (not on norms, biases, tokens, positions)")
    betas: list[float] = option([0.9, 0.95], "AdamW betas", nargs=2)
    clip_grad: float | None = option(None, "clip the gradient norm to this value")
    precision: str = option("auto", "fp32, bf16 or fp16 (auto: bf16 on GPU, fp32 on CPU; bf16 runs on a CPU too, "
                            "fp16 needs a GPU)",
                            choices=["auto", "fp32", "bf16", "fp16"])
    device: str = option("auto", "cpu, cuda or auto", choices=["auto", "cpu", "cuda"])
    num_workers: int | None = option(None, "data loader processes per process (default: the CPUs left over; "
                                     "training on a CPU: threads load between the steps)")
    seed: int = option(0, "random seed; a CPU run with the same seed is repeated bit for bit")
    checkpoint_every: int = option(500, "also checkpoint every N optimizer steps (0: epoch ends only)")
    keep_checkpoints: int = option(3, "step-numbered checkpoints to keep (last.pt is always kept)")
    log_every: int = option(10, "write log.jsonl every N optimizer steps")
    compile: bool = option(False, "torch.compile the model's training forward and backward (AdamW is already "
                           "one fused kernel); the first step pays the compilation, and the log says how long")
    dist_timeout: float = option(60.0, "multi-process: minutes a process waits for the others in a collective "
                                 "before the job fails (NCCL's own default is 10)")


@dataclass
class EncoderConfig:
    """Where the ViT's weights come from, its shape, and how its inputs are normalised."""

    init: str | None = option(None, "start from these weights (fresh optimizer and schedule)")
    trust_checkpoint: bool = option(False, "allow --init and --shape-from checkpoints that need unsafe unpickling")
    shape_from: str | None = option(None, "build the model this checkpoint describes (its shape, bands, band "
                                    "groups and pixel contract) with random weights: a random-initialisation "
                                    "baseline of the same model (not with --init)")
    model: str | None = option(None, "size preset: vit_tiny, vit_small, vit_base, vit_large, vit_huge")
    embed_dim: int | None = option(None, "encoder width")
    depth: int | None = option(None, "encoder blocks")
    num_heads: int | None = option(None, "encoder attention heads")
    mlp_ratio: float | None = option(None, "MLP hidden width / width")
    patch_size: int | None = option(None, "patch size in pixels")
    img_size: int | None = option(None, "input size in pixels")
    in_chans: int | None = option(None, "input bands")
    mean: list[float] | None = option(None, "per-band mean on the 0-1 scale (default: ImageNet for 3 bands)",
                                      nargs="+")
    std: list[float] | None = option(None, "per-band std on the 0-1 scale", nargs="+")
    bands: list[str] | None = option(None, "read only these bands of every image, by number from 1 or by name, in "
                                     "this order (e.g. 4 3 2, or B04 B03 B02 with --sensor sentinel2-l2a); the "
                                     "model's --in-chans follows", nargs="+")
    sensor: str | None = option(None, "the images' band layout: sentinel2-l1c, sentinel2-l2a, landsat5, landsat8, "
                                "landsat9, worldview3, worldview3-4band, sentinel1-grd, sar-quad, rgb (default: the "
                                "GeoTIFF's band descriptions and wavelength tags)")
    band_names: list[str] | None = option(None, "a name per model band (default: the sensor's or the file's)",
                                          nargs="+")
    wavelengths: list[float] | None = option(None, "central wavelength per model band in micrometres (0: unknown; "
                                             "thermal above 3, SAR above 1000, e.g. 55465 for C-band)", nargs="+")
    band_gsd: list[float] | None = option(None, "ground sample distance per model band in metres (0: unknown)",
                                          nargs="+")
    band_groups: list[str] | None = option(None, "spectral band groups (SatMAE): each group its own patch "
                                           "embedding and token per location, with a learned group encoding; "
                                           "each group its bands by name or number as --bands, comma-separated "
                                           "(e.g. B02,B03,B04 B05,B06,B07 B11,B12); every model band in one group",
                                           nargs="+")
    band_init: str = option("wavelength", "how an --init encoder with other bands gets its new patch-embedding "
                            "filters: wavelength (each band from the nearest RGB filters, their sum's spread "
                            "matched on the data; needs known wavelengths, else cyclic), cyclic (timm: the RGB "
                            "filters repeated and rescaled), random (kept from a fresh initialisation)",
                            choices=["wavelength", "cyclic", "random"])
    decibels: str | None = option(None, "SAR: read amplitude or intensity (power) values as decibels, floored at "
                                  "-50 dB (complex values are read as their amplitude)",
                                  choices=["amplitude", "intensity"])
    despeckle: int | None = option(None, "SAR: average the intensity over an N x N boxcar (odd N, e.g. 3 or 5) "
                                   "before --decibels, on the image's own pixel grid: for single-look complex "
                                   "data, whose speckle leaves little to predict (GRD is multilooked already)")
    scale: str = option("auto", "how raw pixel values map to the 0-1 scale of --mean/--std: dtype (divide by the "
                        "type's maximum), percentile (each band's 2-98%% range, measured on the data), stats (the "
                        "data's own mean/std become --mean/--std), or a JSON file / run directory recording one; "
                        "auto: the --init weights' scaling, else dtype for 8-bit data or given --mean/--std, else "
                        "stats")
    scale_low: list[float] | None = option(None, "per-band value (on the dtype's 0-1 scale) mapped to 0 "
                                           "(set by --scale)", nargs="+")
    scale_high: list[float] | None = option(None, "per-band value (on the dtype's 0-1 scale) mapped to 1", nargs="+")
    nodata: float | None = option(None, "a raw pixel value meaning 'no data' in every image, besides each GeoTIFF's "
                                  "own nodata value, mask or alpha band (NaN and infinite values are always no data)")
    max_image_pixels: int | None = option(2**31, "decode JPEG/PNG images of at most this many pixels (0: no limit)")


@dataclass
class PretrainConfig(TrainConfig, EncoderConfig):
    """Consecutive MAE pretraining: model, data and schedule."""

    data: list[str] = option([], "image folders (searched recursively), image files or text file lists",
                             nargs="+")
    decoder_dim: int | None = option(None, "decoder width (default 512)")
    decoder_depth: int | None = option(None, "decoder blocks (default 8)")
    decoder_num_heads: int | None = option(None, "decoder attention heads (default width/32)")
    mask_ratio: float = option(0.75, "fraction of patches masked")
    group_masking: str = option("independent", "with --band-groups: mask each group's patches on its own, or the "
                                "same locations in every group", choices=["independent", "shared"])
    norm_pix_loss: bool = option(True, "regress per-patch normalised pixels")
    min_scale: float = option(0.2, "RandomResizedCrop minimum area fraction")
    tile_size: int | None = option(None, "images larger than twice this are sampled as random "
                                   "tiles of this size (default: 4 x img_size)")
    samples_per_epoch: int | None = option(None, "random crops an epoch draws from the pool (default: one per image, "
                                           "or per tile of a large scene); for a few large scenes")
    sample_by: str = option("area", "how crops are spread over the pool: area (each image or tile of a large scene "
                            "alike, so a large scene gives more) or files (each file alike, whatever its size)",
                            choices=["area", "files"])
    eval_data: list[str] | None = option(None, "held-out unlabelled images (never trained on): their MAE loss, on "
                                         "fixed crops and masks, before training and at every --vis-every epoch, "
                                         "with their reconstructions", nargs="+")
    decode_on: str = option("loader", "where JPEGs are decoded, cropped and resized: loader (its processes, "
                            "PIL) or device (torchvision.io.decode_jpeg in batches on the training device: nvJPEG "
                            "on a GPU, for loaders that cannot keep up)", choices=["loader", "device"])
    distill_from: str | None = option(None, "a frozen teacher (any checkpoint --init takes, usually the same natural "
                                      "source): the student also matches its features of the whole image (GFM)")
    distill_weight: float = option(1.0, "weight of the distillation loss beside the reconstruction loss")
    distill_target: str = option("tokens", "tokens: each visible patch's feature; pooled: the mean token",
                                 choices=["tokens", "pooled"])
    distill_block: int | None = option(None, "the block (0-based) whose features are matched (default: the last, "
                                       "after the final norm)")
    distill_loss: str = option("cosine", "negative cosine or smooth L1, through a linear projector trained with "
                               "the student (dropped at export)", choices=["cosine", "smooth_l1"])
    replay: list[str] | None = option(None, "source-domain images (e.g. the natural source's own data) mixed into "
                                      "every batch, against forgetting", nargs="+")
    replay_fraction: float = option(0.25, "with --replay: the share of samples drawn from it (seeded per sample)")
    replay_sensor: str | None = option(None, "with --replay: the replay images' band layout (as --sensor; rgb for "
                                       "photos) when their bands differ from the model's: each model band is fed "
                                       "by the replay band nearest it in wavelength, the others masked out of input "
                                       "and loss (default: the files' own band descriptions)")
    vis_every: int = option(10, "write a reconstruction grid every N epochs (0: never)")
    probe_target: str | None = option(None, "labelled target images (ImageFolder or CSV): kNN-probe them "
                                      "every --probe-every epochs (is the pretraining helping?)")
    probe_source: str | None = option(None, "labelled source-domain images: kNN-probe them too (how much is "
                                      "forgotten?)")
    probe_every: int = option(0, "epochs between kNN probes (0: never)")
    stop_on_plateau: int = option(0, "stop when the target probe has not improved for N probes (0: never)")


@dataclass
class LabelledDataConfig:
    """A labelled image dataset and its train/val/test split."""

    data: str | None = option(None, "one labelled set to split: an ImageFolder directory or a path,label CSV")
    train: str | None = option(None, "explicit training set (ImageFolder directory or CSV) instead of --data")
    val: str | None = option(None, "explicit validation set (selects the best checkpoint)")
    test: str | None = option(None, "explicit test set (default: the validation set)")
    train_fraction: float = option(0.5, "with --data: fraction of each class used for training")
    val_fraction: float = option(0.0, "with --data: fraction of each class held out for validation")
    label_fraction: float = option(1.0, "keep only this fraction of the training labels (per class)")
    split_seed: int = option(0, "seed of the stratified split (independent of --seed)")
    eval_crop_ratio: float = option(0.875, "evaluation: resize to img_size / ratio, then centre-crop")


@dataclass
class ClassifyConfig(TrainConfig, EncoderConfig, LabelledDataConfig):
    """Scene classification fine-tuning (the MAE/CSPT recipe)."""

    epochs: int = option(100, "number of epochs")
    batch_size: int = option(32, "images per device per step (before accumulation)")
    blr: float = option(5e-4, "base learning rate: lr = blr * effective_batch / 256")
    min_lr: float = option(1e-6, "learning rate at the end of the cosine schedule")
    betas: list[float] = option([0.9, 0.999], "AdamW betas", nargs=2)
    global_pool: str = option("avg", "avg: mean of patch tokens + fc_norm; token: the cls token",
                              choices=["avg", "token"])
    drop_path: float = option(0.1, "stochastic depth rate")
    layer_decay: float = option(0.65, "layer-wise lr decay (1.0: off)")
    mixup: float = option(0.8, "mixup alpha (0: off)")
    cutmix: float = option(1.0, "cutmix alpha (0: off)")
    mixup_prob: float = option(1.0, "probability of mixing a batch")
    mixup_switch_prob: float = option(0.5, "probability of cutmix instead of mixup when both are on")
    smoothing: float = option(0.1, "label smoothing")
    rand_augment: str | None = option("rand-m9-mstd0.5-inc1", "timm RandAugment policy for RGB (none: off)")
    reprob: float = option(0.25, "random erasing probability")
    min_scale: float = option(0.08, "RandomResizedCrop minimum area fraction")
    ema: float | None = option(None, "keep an EMA of the weights with this decay and evaluate it")
    eval_every: int = option(1, "evaluate on the validation set every N epochs")


@dataclass
class PyramidConfig:
    """The multi-level feature pyramid dense heads (segmentation, detection) read from the ViT."""

    pyramid: str = option("cspt", "cspt: taps after four blocks; simple: ViTDet, last block only",
                          choices=["cspt", "simple"])
    taps: list[int] | None = option(None, "blocks the pyramid taps (default: 3 5 7 11 scaled to the depth)",
                                    nargs=4)


@dataclass
class SegmentConfig(TrainConfig, EncoderConfig, PyramidConfig):
    """Semantic segmentation fine-tuning: ViT + feature pyramid + UperNet (the CSPT/BEiT recipe)."""

    images: list[str] = option([], "image folders (or one image,mask CSV); masks sit in a 'masks' folder "
                               "beside each 'images' folder unless --masks is given", nargs="+")
    masks: list[str] | None = option(None, "mask folders mirroring --images, one per --images folder", nargs="+")
    scenes: list[str] | None = option(None, "GeoTIFF scenes labelled by --labels (instead of --images)", nargs="+")
    labels: str | None = option(None, "vector labels of --scenes (GeoPackage, GeoJSON, shapefile; any CRS): "
                                "polygons rasterised onto each scene's grid")
    class_field: str | None = option(None, "the --labels attribute naming each polygon's class (classes in "
                                     "sorted order, numerically for integer codes, unless --class-names gives it); "
                                     "without it every polygon is one class, named after the file")
    background: str | None = option(None, "with --labels: pixels with data under no polygon are this class (index "
                                    "0) instead of being ignored, e.g. for polygons of one class")
    val_images: list[str] | None = option(None, "validation image folders (or CSV)", nargs="+")
    val_masks: list[str] | None = option(None, "validation mask folders", nargs="+")
    val_fraction: float = option(0.0, "without --val-images: hold out this fraction of the tiles (seeded)")
    test_fraction: float = option(0.0, "also hold out this fraction as a test split (as --split says): never "
                                  "trained on or used to choose the model; cspt evaluate segment scores it")
    split_seed: int = option(0, "seed of the hold-out")
    split: str = option("by-file", "how --val-fraction is held out: by-file (whole files), blocks (blocks of the "
                        "map, with --split-buffer between training and validation: for scenes cut in tiles or "
                        "one large scene), polygons (your own regions: --split-polygons) or random (sliding "
                        "windows at random, which overlap across the split: only to measure how much that "
                        "overstates the scores)", choices=["by-file", "blocks", "polygons", "random"])
    block_size: float | None = option(None, "--split blocks: the side of a block in map units (pixels for images "
                                      "without a map position; default: 4 sliding windows)")
    split_buffer: float = option(0.0, "--split blocks: no training pixel lies within this distance (map units) of "
                                 "a validation pixel")
    split_polygons: str | None = option(None, "--split polygons: a vector file (any CRS) whose polygons' "
                                        "--split-field says train or val")
    split_field: str = option("split", "--split polygons: the attribute naming each polygon's split")
    palette: str | None = option(None, "colour-coded masks: a palette YAML (classes: {name: [r, g, b]}, "
                                 "ignore: [[r, g, b]]) or a built-in name (dubai)")
    class_names: list[str] | None = option(None, "index masks: the class names, in index order", nargs="+")
    ignore_index: int = option(255, "mask value that is not scored")
    crop_size: int | None = option(None, "training crop and sliding window, in pixels (default: img_size)")
    stride: int | None = option(None, "sliding-window stride (default: 2/3 of the crop)")
    resize: float = option(1.0, "rescale tiles by this factor before cropping and inference "
                           "(metrics at full resolution)")
    scale_range: list[float] = option([0.5, 2.0], "random scale jitter of training tiles", nargs=2)
    photometric: bool = option(True, "random brightness/contrast/saturation/hue on RGB training crops")
    channels: int = option(768, "UperNet channels")
    aux_channels: int = option(256, "auxiliary FCN head channels (0: no auxiliary head)")
    aux_weight: float = option(0.4, "weight of the auxiliary loss")
    layer_decay: float = option(0.65, "layer-wise lr decay of the encoder (1.0: off)")
    drop_path: float = option(0.1, "stochastic depth rate")
    epochs: int = option(50, "number of epochs (an epoch: about one crop per crop-sized area of every tile)")
    windows_per_epoch: int | None = option(None, "crops per epoch, drawn from the training regions by area (default: "
                                           "one per crop-sized area; for scenes too large to cover each epoch)")
    batch_size: int = option(4, "crops per device per step (at least 2: the heads use BatchNorm)")
    blr: float = option(4.8e-4, "base learning rate: lr = blr * effective_batch / 256 (3e-5 at batch 16)")
    min_lr: float = option(0.0, "learning rate at the end of the schedule")
    betas: list[float] = option([0.9, 0.999], "AdamW betas", nargs=2)
    lr_schedule: str = option("poly", "after warmup: poly (linear decay, as mmseg) or cosine",
                              choices=["cosine", "poly"])
    warmup_epochs: float = option(1.0, "epochs of linear warmup")
    eval_every: int = option(1, "evaluate on the validation tiles every N epochs")


@dataclass
class DetectConfig(TrainConfig, EncoderConfig, PyramidConfig):
    """Object detection fine-tuning: ViT + feature pyramid + FPN + Faster R-CNN."""

    train: str | None = option(None, "training annotations: COCO JSON, DOTA labelTxt folder, VOC/DIOR/HRSC "
                               "XML folder or file, or image,xmin,ymin,xmax,ymax,label CSV")
    images: str | None = option(None, "folder of the training images")
    val: str | None = option(None, "validation annotations (selects the best checkpoint; metrics.json)")
    val_images: str | None = option(None, "folder of the validation images (default: --images)")
    format: str = option("auto", "annotation format (vector: boxes/polygons in map coordinates over the GeoTIFFs "
                         "in --images)", choices=["auto", "coco", "dota", "voc", "hrsc", "csv", "vector"])
    class_field: str = option("class", "vector annotations: the attribute naming each feature's class")
    classes: list[str] | None = option(None, "fix the class list (other names are an error)", nargs="+")
    tile_size: int | None = option(None, "training tile and sliding window in pixels; the network input "
                                   "(default: img_size)")
    tile_overlap: int = option(200, "overlap of neighbouring tiles and windows, in pixels")
    min_visible: float = option(0.5, "keep a clipped box when at least this fraction of it is inside the tile")
    empty_tiles: float = option(0.1, "fraction of object-free training tiles kept")
    scale_range: list[float] = option([0.8, 1.25], "random scale jitter of training tiles", nargs=2)
    photometric: bool = option(False, "random brightness/contrast/saturation/hue on RGB training tiles (for "
                               "scenes from other sites, seasons or sensors than the training ones)")
    fpn_channels: int = option(256, "FPN width")
    anchor_sizes: list[int] = option([16, 32, 64, 128, 256], "anchor side per FPN level (5 levels)", nargs=5)
    rpn_proposals: int | None = option(None, "RPN proposals per image, kept before (per level) and after NMS "
                                       "(default: torchvision's 2000 in training, 1000 in inference, for "
                                       "800-1333 px images; fewer is faster on small tiles)")
    roi_samples: int = option(512, "RoI head: proposals sampled per training image")
    box_head: str = option("mlp", "RoI box head: mlp (two 1024-wide layers, torchvision's default) or conv (four "
                           "3x3 conv-BN layers and one 1024-wide layer: ViTDet's 4conv1fc)", choices=["mlp", "conv"])
    detections_per_image: int = option(300, "most detections kept per window; a scene keeps every window's")
    score_threshold: float = option(0.05, "drop detections scoring below this")
    nms_iou: float = option(0.5, "class-wise NMS threshold of the detections, in a window and across "
                             "windows (lower it for objects that never overlap, e.g. tree crowns)")
    layer_decay: float = option(0.75, "layer-wise lr decay of the encoder (1.0: off)")
    drop_path: float = option(0.1, "stochastic depth rate")
    epochs: int = option(12, "number of epochs (an epoch: every kept training tile once)")
    batch_size: int = option(2, "tiles per device per step")
    blr: float = option(1.6e-3, "base learning rate: lr = blr * effective_batch / 256 (1e-4 at batch 16)")
    min_lr: float = option(0.0, "learning rate at the end of the schedule")
    betas: list[float] = option([0.9, 0.999], "AdamW betas", nargs=2)
    warmup_epochs: float = option(1.0, "epochs of linear warmup")
    eval_every: int = option(1, "evaluate on the validation scenes every N epochs")


@dataclass
class ProbeConfig(LabelledDataConfig):
    """kNN and linear probes on frozen encoder features."""

    checkpoint: str | None = option(None, "encoder weights: any checkpoint the loader accepts, or a run")
    trust_checkpoint: bool = option(False, "allow checkpoints that need unsafe unpickling")
    output: str | None = option(None, "folder for metrics.json and the confusion matrix")
    img_size: int | None = option(None, "input size in pixels (default: the checkpoint's)")
    mean: list[float] | None = option(None, "per-band mean on the 0-1 scale (default: the checkpoint's, "
                                      "else ImageNet for 3 bands)", nargs="+")
    std: list[float] | None = option(None, "per-band std on the 0-1 scale", nargs="+")
    pool: str = option("avg", "features: mean of normed patch tokens (avg) or the cls token",
                       choices=["avg", "token"])
    k: int = option(20, "kNN: neighbours that vote")
    temperature: float = option(0.07, "kNN: votes weighted by exp(cosine / temperature)")
    epochs: int = option(90, "linear: epochs over the cached features")
    batch_size: int = option(256, "images per feature batch; linear-probe batch size")
    blr: float = option(0.1, "linear: base learning rate, lr = blr * batch / 256")
    weight_decay: float = option(0.0, "linear: weight decay")
    optimizer: str = option("sgd", "linear: SGD with momentum 0.9, or LARS as in MAE (its layer-wise trust ratio "
                            "suits MAE's batch of 16384; at small batches it barely moves the head)",
                            choices=["sgd", "lars"])
    device: str = option("auto", "cpu, cuda or auto", choices=["auto", "cpu", "cuda"])
    num_workers: int | None = option(None, "data loader workers (default: by CPU count)")
    seed: int = option(0, "seed of the linear probe")
    max_image_pixels: int | None = option(None, "decode JPEG/PNG images of at most this many pixels (0: no limit; "
                                          "default: the checkpoint's, else 2**31)")


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of a config class by name."""
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    """Check a YAML or CLI value against the field's type, converting ints to floats etc."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise CsptError(f"{source}: '{name}' cannot be empty")
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if inner[0] is str and isinstance(value, str) and value.lower() in NONE_WORDS:
            return None
        return _coerce(name, value, inner[0], source)
    if typing.get_origin(hint) is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(name, v, args[0], source) for v in items]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # e.g. a band number in YAML
    exact = {bool: isinstance(value, bool), str: isinstance(value, str),
             int: isinstance(value, int) and not isinstance(value, bool)}
    if exact.get(hint, False):
        return value
    raise CsptError(f"{source}: '{name}' should be {getattr(hint, '__name__', hint)}, got {value!r}")


def build_config(cls: type[C], yaml_path: str | Path | None = None,
                 overrides: dict[str, Any] | None = None) -> C:
    """Defaults, then the YAML file, then ``overrides`` (e.g. the command-line flags)."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(read_yaml(yaml_path))
    values.update(overrides or {})
    return make_config(cls, values, str(yaml_path or "command line"))


def make_config(cls: type[C], values: dict[str, Any], source: str) -> C:
    """A config from a dict, checking every key and value; errors name ``source``."""
    hints = typing.get_type_hints(cls)
    known = config_fields(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise CsptError(f"{source}: unknown key(s) {', '.join(unknown)}")
    return cls(**{k: _coerce(k, v, hints[k], source) for k, v in values.items()})


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (the later one would silently win)."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor": its keys may be overridden
            continue
        key = loader.construct_object(key_node)
        if isinstance(key, Hashable) and key in lines:
            raise yaml.constructor.ConstructorError(
                None, None, f"found the key {key!r} twice (lines {lines[key]} and {key_node.start_mark.line + 1})")
        lines[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, with one-line errors naming the file (a key given twice is one)."""
    path = Path(path)
    if not path.is_file():
        raise CsptError(f"{path}: config file not found")
    try:
        values = yaml.load(path.read_text(), Loader=UniqueKeyLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise CsptError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise CsptError(f"{path}: expected a mapping of option: value")
    return values


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config as a plain dict (nested dataclasses included)."""
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    """Write a config to ``path`` as YAML, its fields in declaration order."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
