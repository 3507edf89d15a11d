"""What every stage shares: encoder settings, ``--init`` loading, starting or continuing a run,
and reading back the described weights a stage exports."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
from rasterio.crs import CRS
from safetensors.torch import load_file
from torch import Tensor, nn

from cspt.config import EncoderConfig, PyramidConfig, TrainConfig, save_config
from cspt.data.aoi import SceneArea, scene_area
from cspt.data.bands import (
    NATURAL_RGB,
    Band,
    BandFeed,
    config_band_groups,
    file_bands,
    given_bands,
    group_bands,
    group_labels,
    is_radar,
    sensor_bands,
)
from cspt.data.bands import describe as describe_bands
from cspt.data.bands import select as select_bands
from cspt.data.georaster import georeference_of
from cspt.data.images import ImageReadError, image_info
from cspt.data.normalisation import log_normalisation, resolve_normalisation
from cspt.data.pixels import PixelContract, write_contract
from cspt.data.scaling import data_type, resolve_scaling
from cspt.data.stats import normalisation_mismatch
from cspt.data.vector_labels import VectorLabels
from cspt.engine.distributed import DistContext, all_gather_objects, setup_distributed, shutdown_distributed
from cspt.engine.progress import scenes_progress
from cspt.engine.run_dir import (
    check_same_run,
    config_for_resume,
    has_checkpoint,
    run_dir_of,
    run_lock,
    saved_config,
)
from cspt.engine.trainer import Task
from cspt.errors import CsptError, SomeInputsFailed, user_message
from cspt.models.pyramid import default_taps
from cspt.models.vit import ArchConfig, resolve_arch
from cspt.weights.band_adapt import matched_scale
from cspt.weights.descriptions import ModelDescription, description_from_dict
from cspt.weights.export import lineage_of
from cspt.weights.graphs import OnnxModel, is_graph_file
from cspt.weights.load import Checkpoint, description_of, load_checkpoint, load_into_model, sidecar_of

C = TypeVar("C", bound=TrainConfig)

log = logging.getLogger("cspt")

ARCH_KEYS = [f.name for f in dataclasses.fields(ArchConfig)]
#: where a fine-tuning run records the data split it was started with
SPLITS_DIR = "splits"


def resolved_encoder_fields(config: EncoderConfig, init: Checkpoint | None,
                            data_files: Callable[[], list[Path]] = list) -> dict[str, Any]:
    """Architecture (flags > preset > ``init`` shapes) and the pixel contract's fields (bands and what they
    are, nodata, decibels, mean/std, scaling), as config field values.

    ``data_files`` lists the training images: their first file names the bands, and a scaling is measured on
    them (``--scale``).
    """
    files = functools.cache(data_files)
    recorded = recorded_contract(init) if init is not None else None
    numbers, available = selected_bands(config, files)
    explicit = {k: getattr(config, k, None) for k in ARCH_KEYS if k != "band_groups"}  # names: resolved below
    if numbers or (config.sensor and available):  # the model takes the bands named
        explicit["in_chans"] = explicit["in_chans"] or len(numbers or available)
    inferred = dict(init.arch) if init else {}
    init_groups = inferred.pop("band_groups", None)  # kept below where they still fit the model's bands
    arch = resolve_arch(explicit, config.model, inferred)
    names = {f.name for f in dataclasses.fields(config)}
    fields = {k: v for k, v in arch.to_dict().items() if k in names and k != "band_groups"}
    recorded_stats = (recorded.mean, recorded.std) if recorded is not None else None
    fields["mean"], fields["std"] = resolve_normalisation(config.mean, config.std, arch.in_chans,
                                                          recorded_stats, init.path if init else None)
    nodata, decibels = config.nodata, config.decibels
    if recorded is not None and not numbers and recorded.bands and not config.sensor:  # unless told
        numbers = list(recorded.bands)
        log.info("bands: %s, as %s recorded (--bands to choose others)", " ".join(map(str, numbers)), init.path)
    if [str(n) for n in numbers] != [str(b) for b in config.bands or []]:  # names, or what --init learned
        fields["bands"] = [str(n) for n in numbers]
    if recorded is not None and nodata is None and recorded.nodata is not None:
        nodata = fields["nodata"] = recorded.nodata
        log.info("nodata: %g, as %s recorded (--nodata to name another value)", nodata, init.path)
    spectral = band_metadata(config, arch.in_chans, numbers, available, recorded)
    if spectral is not None:
        fields["band_names"] = [b.name for b in spectral]
        fields["wavelengths"] = [b.wavelength for b in spectral]
        fields["band_gsd"] = [b.gsd for b in spectral]
        log.info("bands: %s", describe_bands(spectral))
    fields["band_groups"] = resolved_band_groups(config, arch.in_chans, numbers, spectral, init, init_groups,
                                                 recorded)
    if recorded is not None and decibels is None and recorded.decibels and (spectral is None or is_radar(spectral)):
        decibels = fields["decibels"] = recorded.decibels
        log.info("decibels: %s values, as %s recorded", decibels, init.path)
    despeckle = config.despeckle
    if recorded is not None and despeckle is None and recorded.despeckle and decibels == recorded.decibels:
        despeckle = fields["despeckle"] = recorded.despeckle
        log.info("despeckle: a %dx%d boxcar, as %s recorded (--despeckle 1 for none)", despeckle, despeckle,
                 init.path)
    contract = PixelContract(tuple(fields["mean"]), tuple(fields["std"]), tuple(numbers) if numbers else None,
                             nodata=nodata, max_image_pixels=config.max_image_pixels or None, decibels=decibels,
                             despeckle=despeckle)
    check_data_bands(contract, files)
    if config.scale_low and config.scale_high:
        return fields
    scaling = resolve_scaling(config.scale, contract, files, recorded, config.mean is not None)
    if scaling is not None:
        log.info("scaling: %s", scaling.describe(data_type(files())))
        fields["scale_low"], fields["scale_high"] = scaling.low, scaling.high
    return fields


def resolved_band_groups(config: EncoderConfig, in_chans: int, numbers: Sequence[int],
                         spectral: Sequence[Band] | None, init: Checkpoint | None,
                         init_groups: Sequence[Sequence[int]] | None,
                         recorded: PixelContract | None) -> list[str] | None:
    """``--band-groups`` checked against the model's bands, else the groups of an ``--init`` encoder that had
    them (as names where known) when the model takes the same bands in the same order; None without groups."""
    model_numbers = list(numbers) or list(range(1, in_chans + 1))
    names = [b.name for b in spectral] if spectral else None
    if config.band_groups:
        group_bands(config.band_groups, model_numbers, names)
        return list(config.band_groups)
    if not init_groups:
        return None
    if not same_bands(recorded, model_numbers, spectral, numbers) or sum(map(len, init_groups)) != in_chans:
        log.warning("band groups: %s was grouped over other bands than this model's: no groups (--band-groups "
                    "to give some)", init.path if init else "--init")
        return None
    groups = group_labels(init_groups, model_numbers, names)
    log.info("band groups: %s, as %s recorded", " ".join(groups), init.path if init else "--init")
    return groups


def same_bands(recorded: PixelContract | None, model_numbers: Sequence[int], spectral: Sequence[Band] | None,
               numbers: Sequence[int]) -> bool:
    """Whether the model takes the bands a checkpoint recorded, in the same order: by name where both sides
    name them (names of digits only are positions, not names), else by file number and any known wavelength."""
    if recorded is None:
        return not numbers
    ours, theirs = list(spectral or []), list(recorded.spectral or [])
    if ours and theirs and not any(b.name.isdigit() for b in ours + theirs):
        return [b.name for b in theirs] == [b.name for b in ours]
    if list(recorded.bands or range(1, recorded.in_chans + 1)) != list(model_numbers):
        return False
    return not (ours and theirs) or all(a.wavelength == b.wavelength or not (a.wavelength and b.wavelength)
                                        for a, b in zip(ours, theirs, strict=True))


def selected_bands(config: EncoderConfig, files: Callable[[], list[Path]]) -> tuple[list[int], tuple[Band, ...]]:
    """``--bands`` as 1-based numbers (names looked up in the first readable image's bands) and that image's
    bands (``--sensor``'s, checked against it; the preset's alone without a readable image)."""
    available: tuple[Band, ...] = ()
    where = Path(f"--sensor {config.sensor}")
    for path in files():
        try:
            available, where = file_bands(path, config.sensor), path
            break
        except ImageReadError:
            continue
    if not available and config.sensor:
        available = sensor_bands(config.sensor)
    tokens = config.bands or []
    if available:
        return select_bands(tokens, available, where), available
    if any(not str(t).isdigit() for t in tokens):
        raise CsptError(f"--bands {' '.join(map(str, tokens))}: band names need images (or --sensor) to look "
                        "them up in")
    return [int(t) for t in tokens], available


def band_metadata(config: EncoderConfig, in_chans: int, numbers: Sequence[int], available: Sequence[Band],
                  recorded: PixelContract | None) -> tuple[Band, ...] | None:
    """What each model band is: the flags, else the selected bands of the images, else what ``--init``
    recorded when the same bands are selected; None when nothing is known."""
    chosen = [available[n - 1] for n in numbers if n <= len(available)] if numbers else list(available)
    known = any(b.wavelength > 0 or not b.name.isdigit() for b in chosen) and len(chosen) == in_chans
    same_bands = recorded is not None and list(recorded.bands or []) == list(numbers)
    if not known and same_bands and recorded.spectral and recorded.in_chans == in_chans:
        chosen, known = list(recorded.spectral), True
    if not known and not (config.band_names or config.wavelengths or config.band_gsd):
        return None
    return given_bands(in_chans, config.band_names, config.wavelengths, config.band_gsd,
                       chosen if known else [])


def contract_of(config: EncoderConfig) -> PixelContract:
    """The pixel contract a resolved stage config describes."""
    scaled = bool(config.scale_low and config.scale_high)
    return PixelContract(tuple(config.mean), tuple(config.std), tuple(int(b) for b in config.bands)
                         if config.bands else None,
                         tuple(config.scale_low) if scaled else None, tuple(config.scale_high) if scaled else None,
                         config.nodata, f"--scale {config.scale}" if scaled else "dtype",
                         config.max_image_pixels or None, config_bands(config), config.decibels, config.despeckle)


def config_bands(config: EncoderConfig) -> tuple[Band, ...] | None:
    """What each model band is, as a config's ``band_names``/``wavelengths``/``band_gsd`` say (None: no names)."""
    if not config.band_names:
        return None
    return given_bands(len(config.band_names), config.band_names, config.wavelengths, config.band_gsd, [])


def recorded_contract(checkpoint: Checkpoint) -> PixelContract | None:
    """The pixel contract a checkpoint's weights were trained with: the one its cspt description records,
    else plain dtype scaling with the normalisation a stored config gives; None when nothing records one."""
    described = checkpoint.described
    if isinstance(described.get("pixels"), dict) or isinstance(described.get("mean"), list):
        return PixelContract.from_description(described, None, checkpoint.path)
    if checkpoint.normalisation is None:
        return None
    mean, std = checkpoint.normalisation
    return PixelContract(tuple(mean), tuple(std), scaling=f"dtype, recorded with {checkpoint.path}")


def checkpoint_contract(checkpoint: Checkpoint, bands: int, mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None, max_image_pixels: int | None = None) -> PixelContract:
    """What a checkpoint's encoder is fed, for the tools that read one (probes, ``visualize``, ``gap``).

    Its recorded contract (bands, nodata, scaling, normalisation), else the default
    normalisation for ``bands`` bands on the dtype scale; ``mean``/``std`` when given replace the
    normalisation and drop the recorded scaling (they are then on the dtype scale, as in every
    stage). Logged.
    """
    recorded = recorded_contract(checkpoint)
    if recorded is not None and recorded.in_chans != bands:
        log.warning("normalisation: %s records a %d-band pixel contract, the model has %d bands: not used",
                    checkpoint.path, recorded.in_chans, bands)
        recorded = None
    contract = recorded or PixelContract(*map(tuple, resolve_normalisation(None, None, bands)))
    if mean is not None or std is not None:
        given = resolve_normalisation(mean, std, bands, (list(contract.mean), list(contract.std)))
        contract = contract.replace(mean=tuple(given[0]), std=tuple(given[1]), low=None, high=None,
                                    scaling="dtype")
    if max_image_pixels is not None:
        contract = contract.replace(max_image_pixels=max_image_pixels or None)
    log.info("pixels: %s (%s)", contract.describe(),
             f"recorded with {checkpoint.path}" if recorded is not None else "defaults")
    return contract


def source_contract(target: PixelContract, files: Sequence[Path], role: str,
                    feed: BandFeed | None = None) -> PixelContract:
    """How images of another source (replay, a probe's source set, ``gap``'s source) become inputs of a model
    fed by ``target``: the model's mean/std, every band of the source files (grey, or the model's band count),
    and their own scaling (``auto``: the dtype scale for 8-bit photos, else measured on them); SAR read in the
    model's decibels. With ``feed`` (another sensor's bands): the source bands it reads, each normalised as the
    model band it feeds."""
    mean, std, bands = target.mean, target.std, None
    if feed is not None:
        fed = [feed.feeds.index(position) for position in range(len(feed.read))]
        mean, std = tuple(target.mean[b] for b in fed), tuple(target.std[b] for b in fed)
        bands = feed.read
    contract = PixelContract(mean, std, bands, max_image_pixels=target.max_image_pixels, decibels=target.decibels,
                             despeckle=target.despeckle)
    for path in files:
        try:
            contract.info(path)
        except ImageReadError:
            continue
        except CsptError as err:
            raise CsptError(f"{role}: {err} (the model's own data: {target.in_chans} band(s), --bands "
                            f"{' '.join(map(str, target.bands or [])) or 'all'})") from None
        break
    scaling = resolve_scaling("auto", contract, lambda: files)
    if scaling is not None:
        log.info("%s scaling: %s", role, scaling.describe(data_type(files)))
        contract = contract.replace(low=tuple(scaling.low), high=tuple(scaling.high), scaling=scaling.method)
    return contract


def check_data_bands(contract: PixelContract, data_files: Callable[[], list[Path]]) -> None:
    """Refuse a band selection beyond the first readable training image's bands, or a band count the model does
    not take, in one line, before any loader starts."""
    for path in data_files():
        try:
            contract.info(path)
        except ImageReadError:
            continue
        return


def images_in(sources: list[str | None],
              csv_images: Callable[[Path], list[Path]] | None = None) -> Callable[[], list[Path]]:
    """The images ``sources`` name (folders, images, lists, shards; labelled CSVs through the task's own reader
    ``csv_images``), listed when called: what automatic scaling measures."""
    from cspt.data.files import find_images

    def listed() -> list[Path]:
        csvs = [Path(s) for s in sources if s and Path(s).suffix.lower() == ".csv"]
        kept = [s for s in sources if s and Path(s).suffix.lower() != ".csv"]
        try:
            files = find_images(kept) if kept else []
            return files + [image for table in csvs if csv_images for image in csv_images(table)]
        except CsptError:  # the stage's own data checks say what is wrong
            return []

    return listed


def check_normalisation(files: list[Path], contract: PixelContract, is_main: bool) -> None:
    """Say in one line, before training, when the run's pixel contract does not fit its training images."""
    if not is_main or not files:
        return
    log.info("pixels: %s", contract.describe())
    mismatch = normalisation_mismatch(files, contract)
    if mismatch:
        log.warning("%s", mismatch)


def check_prediction_inputs(paths: Sequence[Path], contract: PixelContract, sample: int = 16) -> None:
    """Warn, before predicting, when the images do not look like what the model was trained on: grey images
    repeated to the model's bands, or pixels its contract scales and normalises to nearly constant or
    saturated values (another dtype, bit depth or sensor). The prediction still runs."""
    if not paths:
        return
    if contract.bands is None and contract.in_chans > 1:
        grey = [path for path in paths[:sample] if _band_count(path) == 1]
        if grey:
            log.warning("%s (and %d more of the first %d) has one band: it is repeated to the model's %d bands",
                        grey[0], len(grey) - 1, min(sample, len(paths)), contract.in_chans)
    advice = (f"is this the kind of data the model was trained on? It reads pixels as: {contract.describe()}")
    mismatch = normalisation_mismatch(list(paths), contract, sample, advice=advice)
    if mismatch:
        log.warning("%s", mismatch)


def _band_count(path: Path) -> int | None:
    try:
        return image_info(path).bands
    except CsptError:  # unreadable: prediction names it
        return None


def resolved_taps(config: PyramidConfig) -> list[int]:
    """The pyramid's tapped blocks: ``--taps``, else the style's default for ``config.depth`` (checked)."""
    taps = config.taps or default_taps(config.depth, config.pyramid)
    if not all(0 <= t < config.depth for t in taps):
        raise CsptError(f"--taps {taps} must be block indices below the depth {config.depth}")
    return list(taps)


def arch_of(config: EncoderConfig) -> ArchConfig:
    """The architecture a resolved config describes (decoder fields default when absent; band groups as 0-based
    model bands)."""
    values = dataclasses.asdict(config)
    values["band_groups"] = config_band_groups(values, config.in_chans or 0)
    return ArchConfig.from_dict(values)


def load_init_weights(model: nn.Module, config: EncoderConfig, init: Checkpoint | None,
                      drop: tuple[str, ...] = (), data_files: Callable[[], list[Path]] = list) -> None:
    """Load ``--init`` (already read, or read now) into ``model``; log the report and the normalisation.

    Keys starting with a prefix in ``drop`` (e.g. a decoder or an old head) are left out. A patch embedding
    grown to other bands by wavelength is scaled on crops of ``data_files`` (the training images).
    """
    if not config.init:
        log_normalisation(config.mean, config.std)
        return
    init = init or load_checkpoint(config.init, config.trust_checkpoint)
    log_normalisation(config.mean, config.std, init.normalisation, init.path)
    source_groups = init.arch.get("band_groups") if "group_embed" in init.state_dict else None
    groups = arch_of(config).band_groups
    if source_groups is not None and [list(g) for g in groups or []] != source_groups:
        drop += ("group_embed", "decoder_group_embed")  # encodings of other groups: fresh ones
    if drop:
        state = {k: v for k, v in init.state_dict.items() if not k.startswith(drop)}
        init = dataclasses.replace(init, state_dict=state)
    contract = contract_of(config)
    report = load_into_model(model, init, checkpoint_bands(init), contract.spectral, config.band_init)
    plan = report.band_plan
    if plan is not None and plan.method == "wavelength":
        crops = None if source_groups is not None else sample_crops(contract, data_files(), config.img_size)
        if source_groups is not None:
            report.adapted.append("patch embedding not scaled: the source embeds its band groups apart")
        elif crops is None:
            report.adapted.append("patch embedding not scaled: no training image to measure on")
        else:
            weight = model.get_parameter("patch_embed.proj.weight")
            groups = groups or (tuple(range(weight.shape[1])),)
            scales = []
            for group in groups:  # each band group's tokens come from its own bands' filters
                scale = matched_scale(init.state_dict["patch_embed.proj.weight"], weight, report.band_plan, crops,
                                      group)
                weight.data[:, list(group)] *= scale
                scales.append(f"{scale:.4f}")
            report.adapted.append(f"patch embedding scaled by {', '.join(scales)}"
                                  f"{' (per band group)' if len(groups) > 1 else ''}: its tokens on {len(crops)} "
                                  "training crops spread as the source filters' on their counterpart bands")
    for line in report.lines():
        log.info("init: %s", line)


def checkpoint_bands(checkpoint: Checkpoint) -> tuple[Band, ...] | None:
    """What the checkpoint's input bands are: recorded, else natural RGB for 3 bands, else not known."""
    recorded = recorded_contract(checkpoint)
    if recorded is not None and recorded.spectral:
        return recorded.spectral
    weight = checkpoint.state_dict.get("patch_embed.proj.weight")
    rgb = weight is not None and weight.shape[1] == 3 and (recorded is None or not recorded.bands)
    return NATURAL_RGB if rgb else None


def sample_crops(contract: PixelContract, files: Sequence[Path], img_size: int, limit: int = 16) -> Tensor | None:
    """Normalised centre crops (4 model inputs wide at most, resized to ``img_size``) of up to ``limit``
    readable images spread over ``files``; None when none can be read."""
    crops = []
    for path in files[:: max(1, len(files) // limit)][:limit]:
        try:
            info = contract.info(path)
            side = min(info.height, info.width, 4 * img_size)
            box = ((info.height - side) // 2, (info.width - side) // 2, side, side)
            crops.append(contract.normalise(contract.read(path, box).resized([img_size, img_size])))
        except (ImageReadError, CsptError):
            continue
    return torch.stack(crops) if crops else None


def shape_source(config: object) -> Checkpoint | None:
    """The ``--shape-from`` checkpoint, read for its architecture and pixel contract only (its weights are not
    loaded); None without one."""
    shape_from = getattr(config, "shape_from", None)
    if not shape_from:
        return None
    if getattr(config, "init", None):
        raise CsptError(f"--shape-from {shape_from}: takes a checkpoint's model without its weights; --init "
                        "takes both, so give one of them")
    log.info("model and pixels: those of %s, with random weights (--shape-from)", shape_from)
    return load_checkpoint(shape_from, getattr(config, "trust_checkpoint", False))


def start_run(cls: type[C], config: C, resume: str | Path | bool | None, overrides: dict[str, Any] | None,
              resolve: Callable[[C, Checkpoint | None], C]) -> tuple[C, Path, Checkpoint | None]:
    """The resolved config, run directory and loaded ``--init`` of a stage.

    ``resume``: a run directory or training checkpoint to continue with its saved config
    (``True``: the config's output); the run's own checkpoint then replaces ``--init``.
    A fresh start in a directory holding a run of other settings is refused.
    """
    if resume:
        run_dir = run_dir_of(config.output if resume is True else resume)
        return config_for_resume(cls, run_dir, overrides or {}), run_dir, None
    if not config.output:
        raise CsptError("no --output run directory given")
    run_dir = Path(config.output)
    shaped = shape_source(config)  # refused beside --init
    init = load_checkpoint(config.init, config.trust_checkpoint) if getattr(config, "init", None) else None
    config = resolve(config, init or shaped)
    if has_checkpoint(run_dir):
        check_same_run(saved_config(run_dir) or {}, config, run_dir)
    return config, run_dir, init


@contextmanager
def distributed_run(config: TrainConfig, run_dir: Path) -> Iterator[DistContext]:
    """Join the process group (under torchrun); the main process locks ``run_dir`` for the run's
    lifetime (:func:`~cspt.engine.run_dir.run_lock`) and writes its ``config.yaml`` (and, for a stage that
    feeds an encoder, its pixel contract, ``pixels.json``)."""
    dist = setup_distributed(config.device, config.dist_timeout)
    try:
        with ExitStack() as stack:
            refusal = None
            if dist.is_main:
                try:
                    stack.enter_context(run_lock(run_dir))
                except CsptError as err:
                    refusal = str(err)
            refusal = all_gather_objects(refusal)[0]  # every process stops, not only the main one
            if refusal:
                raise CsptError(refusal)
            if dist.is_main:
                save_config(config, run_dir / "config.yaml")
                if isinstance(config, EncoderConfig):
                    write_contract(contract_of(config), run_dir)
            yield dist
    finally:
        shutdown_distributed()


def described_weights(checkpoint: str | Path, file_name: str, task: str) -> tuple[Path, ModelDescription]:
    """A stage's exported weights (the file, or ``RUN_DIR/file_name``) and their description."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        raise CsptError(f"{path}: no such {task} model (a {task} run directory, its {file_name} or an exported "
                        ".onnx)")
    values = description_of(path)
    if values.get("task") != task:
        where = "inside it" if is_graph_file(path) else "beside it"
        raise CsptError(f"{path}: not a cspt {task} model (no {task} description {where})")
    return path, description_from_dict(values, path if is_graph_file(path) else sidecar_of(path))


class DescribedModel(NamedTuple):
    """A stage's model rebuilt from its exported weights."""

    model: nn.Module
    info: ModelDescription  #: architecture, classes, pixel contract, lineage, ...
    path: Path  #: the weights file

    def contract(self, max_image_pixels: int | None = None) -> PixelContract:
        """The pixel contract the model was trained with (``max_image_pixels``: replace its pixel limit; 0:
        none)."""
        contract = self.info.contract
        return contract if max_image_pixels is None else contract.replace(max_image_pixels=max_image_pixels or None)


def load_described(checkpoint: str | Path, file_name: str, task: str,
                   build: Callable[[Any], nn.Module]) -> DescribedModel:
    """Rebuild a stage's model from its description and load its weights strictly; an exported ONNX graph
    (:mod:`cspt.weights.graphs`) is run by onnxruntime instead, called as the model."""
    path, info = described_weights(checkpoint, file_name, task)
    if path.suffix.lower() == ".onnx":
        return DescribedModel(OnnxModel(path, task), info, path)
    if is_graph_file(path):
        raise CsptError(f"{path}: cspt predicts with ONNX graphs (--to onnx); load a torch.export archive with "
                        "torch.export.load")
    model = build(info)
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as err:
        raise CsptError(f"{path}: weights do not fit the described model ({str(err).splitlines()[0]})") from None
    return DescribedModel(model.eval(), info, path)


def require_data_for_graph(weights: Path, given: object, flag: str) -> None:
    """A one-line error when an exported graph is evaluated without data (``given`` None): unlike a run
    directory, it has no split of its own to evaluate on."""
    if given is None and is_graph_file(weights):
        raise CsptError(f"{weights}: an exported graph carries no run's evaluation data; pass {flag}")


class FineTuneTask(Task):
    """A downstream task that keeps its best validation epoch: the bookkeeping every one shares."""

    monitor = "val_score"  #: the validation metric that picks the kept weights (higher is better)

    def __init__(self) -> None:
        self.best: dict[str, Any] = {self.monitor: -1.0, "epoch": 0}

    def evaluates_after(self, epoch: int, has_validation: bool) -> bool:
        """Whether to validate after 0-based ``epoch`` (every ``eval_every``, and the last)."""
        done = epoch + 1
        return has_validation and (done % self.config.eval_every == 0 or done == self.config.epochs)

    def improves(self, value: float, epoch: int) -> bool:
        """Record ``value`` of 0-based ``epoch`` when it beats the best so far."""
        if value <= self.best[self.monitor]:
            return False
        self.best = {self.monitor: value, "epoch": epoch + 1}
        return True

    @functools.cached_property
    def parents(self) -> list[dict[str, Any]]:
        """The lineage of the ``--init`` weights (read once: it may hash a large file)."""
        return lineage_of(self.config.init) if self.config.init else []

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best", self.best)


def check_distinct_names(paths: Sequence[Path]) -> None:
    """Refuse, in one line, inputs whose outputs would overwrite each other: one file name (stem) from two
    folders."""
    first: dict[str, Path] = {}
    for path in paths:
        other = first.setdefault(path.stem, path)
        if other != path:
            raise CsptError(f"{other} and {path} would both be written as {path.stem}.*; predict them into "
                            "separate --output folders, or rename one")


#: the files beside a vector output ``NAME.shp`` that belong to it
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")


def vector_outputs(vector_format: str | None) -> list[str]:
    """The output name patterns (``{}`` for the input's stem) of a vector file in ``vector_format``."""
    if not vector_format:
        return []
    return ["{}" + part for part in SHAPEFILE_PARTS] if vector_format == "shp" else ["{}." + vector_format]


def remove_stale_outputs(folder: Path, stem: str, patterns: Sequence[str]) -> None:
    """Remove what an earlier run wrote in ``folder`` for an input that failed in this one (``patterns`` such as
    ``"{}.tif"`` or ``"dota/{}.txt"``), so that nothing there looks like a result of this run."""
    for pattern in patterns:
        (folder / pattern.format(stem)).unlink(missing_ok=True)


def finish_prediction(output: Path, failed: Sequence[str], total: int, what: str = "inputs",
                      outside: int = 0) -> Path:
    """``output`` when every one of ``total`` inputs was predicted (but the ``outside`` an area of interest,
    said in the log and not counted); otherwise the failure in one line: nothing readable (:class:`CsptError`),
    or some inputs failed while the others are written (:class:`SomeInputsFailed`, the command line's exit
    status 3)."""
    if outside:
        log.info("%d of the %d %s lie outside the area of interest: not predicted", outside, total, what)
        total -= outside
    if failed and len(failed) == total:
        raise CsptError(f"none of the {total} {what} could be read (each named above); nothing written to {output}")
    if failed:
        raise SomeInputsFailed(f"{len(failed)} of {total} {what} could not be read (each named above): "
                               f"{', '.join(failed[:3])}{', ...' if len(failed) > 3 else ''}; the other "
                               f"{total - len(failed)} are written to {output}")
    return output


def area_to_predict(path: Path, aoi: VectorLabels | None, crs: CRS | None) -> tuple[bool, SceneArea | None]:
    """Whether to predict ``path`` under an area of interest (``--aoi``/``--bbox``) and an output CRS
    (``--dst-crs``), and the area of it to predict (None: all of it). A scene outside the area is said in the
    log and not predicted; one without a CRS cannot take either, and is refused in one line."""
    if (aoi is not None or crs is not None) and not georeference_of(path).is_georeferenced:
        raise CsptError(f"{path}: has no CRS, so --aoi, --bbox and --dst-crs cannot apply to it")
    if aoi is None:
        return True, None
    area = scene_area(aoi, path)
    if area is None:
        log.info("%s: outside the area of interest %s, not predicted", path, aoi.path)
    return area is not None, area


def predict_each(paths: Sequence[Path], folder: Path, contract: PixelContract, outputs: Sequence[str],
                 predict: Callable[[Path, SceneArea | None], None], what: str = "images",
                 aoi: VectorLabels | None = None, crs: CRS | None = None,
                 after: Callable[[], None] | None = None) -> Path:
    """The one loop of every ``cspt predict`` over its inputs: same-named inputs refused and inputs unlike the
    model's training data warned about first; then ``predict(path, area)`` for each input inside the area of
    interest (``area`` None: all of it). An input that fails is named in one line and skipped; what an
    earlier run wrote for it (``outputs``, patterns such as ``"{}.tif"``), or for an input outside the area,
    is removed. Then ``after()`` (what sums up all inputs), and :func:`finish_prediction` says what failed."""
    check_distinct_names(paths)
    check_prediction_inputs(paths, contract)
    failed, outside = [], 0
    for path in scenes_progress(paths):
        try:
            inside, area = area_to_predict(path, aoi, crs)
            if not inside:
                outside += 1
                remove_stale_outputs(folder, path.stem, outputs)
                continue
            predict(path, area)
        except CsptError as err:  # unreadable, or not what the model reads: the next input still runs
            log.warning("skipped %s: %s", what.rstrip("s"), user_message(err))
            failed.append(path.name)
            remove_stale_outputs(folder, path.stem, outputs)
    log.info("predicted %d of the %d %s into %s", len(paths) - len(failed) - outside, len(paths), what, folder)
    if after is not None:
        after()
    return finish_prediction(folder, failed, len(paths), what, outside)
