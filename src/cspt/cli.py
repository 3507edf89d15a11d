"""Command-line interface: parses arguments and calls the Python API, nothing more."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from cspt.config import ClassifyConfig, DetectConfig, PretrainConfig, ProbeConfig, SegmentConfig, build_config
from cspt.errors import CsptError, SomeInputsFailed, user_message

log = logging.getLogger("cspt")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per config field; unset flags stay out of the namespace (YAML then applies)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        text = f.metadata.get("help") or ""
        if default not in (None, [], False) and "default" not in text:
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            text = f"{text} (default: {shown})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text.replace("%", "%%")
                                  if "%%" not in text else text}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            scalar = typing.get_args(base[0])[0] if typing.get_origin(base[0]) is list else base[0]
            kwargs["type"] = scalar
            for key in ("nargs", "choices"):
                if key in f.metadata:
                    kwargs[key] = f.metadata[key]
        parser.add_argument(flag, **kwargs)


def add_training_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """``--config``, ``--resume`` and one flag per field of the config class ``cls``."""
    parser.add_argument("--config", help="YAML file of options (flags override it)")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                        help="continue a run exactly (default: the --output directory)")
    add_config_flags(parser, cls)


def add_inference_flags(parser: argparse.ArgumentParser) -> None:
    """``--batch-size``, ``--device`` and ``--num-workers``, for evaluating and predicting."""
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--num-workers", type=int, help="data loader workers (default: by CPU count)")


def add_training_commands(commands: argparse._SubParsersAction) -> None:
    """``pretrain``, ``finetune classify|segment|detect`` and ``probe``: one flag per config field."""
    pre = commands.add_parser("pretrain", help="consecutive MAE pretraining on unlabelled images")
    add_training_flags(pre, PretrainConfig)

    finetune = commands.add_parser("finetune", help="fine-tune on a labelled downstream task")
    tasks = finetune.add_subparsers(dest="task", required=True)
    add_training_flags(tasks.add_parser("classify", help="scene classification (MAE/CSPT recipe)"), ClassifyConfig)
    add_training_flags(tasks.add_parser("segment", help="semantic segmentation (ViT + UperNet)"), SegmentConfig)
    add_training_flags(tasks.add_parser("detect", help="object detection (ViT + FPN + Faster R-CNN)"), DetectConfig)

    probe = commands.add_parser("probe", help="kNN or linear probe of a checkpoint's frozen features")
    probe.add_argument("kind", choices=["knn", "linear"])
    probe.add_argument("--config", help="YAML file of options (flags override it)")
    add_config_flags(probe, ProbeConfig, skip=("max_image_pixels",))


def add_evaluate_commands(commands: argparse._SubParsersAction) -> None:
    """``evaluate classify|segment|detect``."""
    evaluate = commands.add_parser("evaluate", help="metrics of a fine-tuned model")
    tasks = evaluate.add_subparsers(dest="task", required=True)
    ev = tasks.add_parser("classify", help="OA, AA, kappa, per-class scores and confusion matrix")
    ev.add_argument("--checkpoint", "--model", required=True,
                    help="fine-tuning run directory, its classifier.safetensors or its exported .onnx")
    ev.add_argument("--data", help="ImageFolder directory or path,label CSV (default: the run's test split)")
    ev.add_argument("--scene", nargs="+", help="large scenes to score per pixel, as predict classify --scene maps "
                    "them, against --masks")
    ev.add_argument("--masks", nargs="+", help="with --scene: one label raster per scene (class indices in the "
                    "classifier's order, 255 not scored)")
    ev.add_argument("--window", type=int, help="with --scene: window side in scene pixels (default: the model's input)")
    ev.add_argument("--stride", type=int, help="with --scene: window step (default: --window)")
    ev.add_argument("--blend", default="none", choices=["cosine", "gaussian", "none"],
                    help="with --scene: how overlapping windows' scores are weighted")
    ev.add_argument("--output", help="folder for metrics.json etc. (default: the run, or RUN/evaluation/NAME)")
    add_inference_flags(ev)
    es = tasks.add_parser("segment", help="mIoU, per-class IoU, OA, mean F1 and confusion matrix")
    es.add_argument("--checkpoint", "--model", required=True,
                    help="segmentation run directory, its segmenter.safetensors or its exported .onnx")
    es.add_argument("--images", nargs="+", help="image folders (default: the run's test regions, else its "
                    "validation regions)")
    es.add_argument("--masks", nargs="+", help="mask folders mirroring --images (default: 'masks' beside 'images')")
    es.add_argument("--blend", default="cosine", choices=["cosine", "gaussian", "none"],
                    help="how overlapping windows' scores are weighted (as predict segment --blend)")
    es.add_argument("--output", help="folder for metrics.json etc. (default: the run, or RUN/evaluation/NAME)")
    es.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ed = tasks.add_parser("detect", help="VOC mAP@0.5 (per class) and COCO mAP@[.5:.95] on whole scenes")
    ed.add_argument("--checkpoint", "--model", required=True,
                    help="detection run directory, its detector.safetensors or its exported .onnx")
    ed.add_argument("--annotations", help="annotations to score against (default: the run's --val)")
    ed.add_argument("--images", help="folder of the annotated images")
    ed.add_argument("--format", default="auto", choices=["auto", "coco", "dota", "voc", "hrsc", "csv", "vector"])
    ed.add_argument("--output", help="folder for metrics.json (default: the run, or RUN/evaluation/NAME)")
    ed.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ed.add_argument("--draw", action="store_true", help="also write drawn/NAME.png: each scene's detections at "
                    "the run's operating point, green where they match a labelled object, red where not, and "
                    "the labelled objects missed in cyan")


def add_map_area_flags(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--aoi``/``--bbox``/``--aoi-crs``/``--dst-crs`` of the commands that write class maps."""
    area = parser.add_mutually_exclusive_group()
    area.add_argument("--aoi", help=f"{prefix}vector file (GeoPackage, GeoJSON, shapefile; any CRS): predict only "
                                    "inside its polygons; scenes outside it are not written")
    area.add_argument("--bbox", nargs=4, type=float, metavar=("MINX", "MINY", "MAXX", "MAXY"),
                      help=f"{prefix}predict only inside this box, in each scene's CRS or --aoi-crs")
    parser.add_argument("--aoi-crs", help="CRS of --bbox, e.g. EPSG:4326 (default: each scene's own)")
    parser.add_argument("--dst-crs", help=f"{prefix}write the map outputs (rasters warped by nearest neighbour, "
                                          "polygons, boxes) in this CRS, e.g. EPSG:3857 (default: each scene's own)")


def add_predict_commands(commands: argparse._SubParsersAction) -> None:
    """``predict classify|segment|detect``."""
    predict = commands.add_parser("predict", help="predictions of a fine-tuned model on new images")
    tasks = predict.add_subparsers(dest="task", required=True)
    pr = tasks.add_parser("classify", help="a path,label,score CSV of images, or a class GeoTIFF of large scenes")
    pr.add_argument("--checkpoint", "--model", required=True,
                    help="fine-tuning run directory, its classifier.safetensors or its exported .onnx")
    source = pr.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="image folders, files or .txt lists: one class each")
    source.add_argument("--scene", nargs="+", help="large scenes: one class per --window, as NAME.tif in --output")
    pr.add_argument("--output", help="CSV to write (default predictions.csv); with --scene, a folder (default maps)")
    pr.add_argument("--window", type=int, help="with --scene: window side in scene pixels (default: the model's input)")
    pr.add_argument("--stride", type=int, help="with --scene: window step (default: --window, no overlap)")
    pr.add_argument("--blend", default="none", choices=["cosine", "gaussian", "none"],
                    help="with --scene and --stride below --window: how overlapping windows' scores are weighted")
    pr.add_argument("--probabilities", action="store_true",
                    help="with --scene: also write NAME_probabilities.tif (uint8, one band per class)")
    add_map_area_flags(pr, "with --scene: ")
    add_inference_flags(pr)
    ps = tasks.add_parser("segment", help="class maps: a georeferenced GeoTIFF per TIFF scene (any size), PNG "
                                          "masks for other images")
    ps.add_argument("--checkpoint", "--model", required=True,
                    help="segmentation run directory, its segmenter.safetensors or its exported .onnx")
    ps.add_argument("--images", required=True, nargs="+", help="image folders, files or .txt lists")
    ps.add_argument("--output", required=True, help="folder for NAME.tif (TIFF inputs) or NAME.png and "
                                                    "NAME_color.png (and NAME_overlay.jpg)")
    ps.add_argument("--draw", action="store_true", help="also write NAME_overlay.jpg: the classes over the image")
    ps.add_argument("--blend", default="cosine", choices=["cosine", "gaussian", "none"],
                    help="how overlapping windows are weighted (none: a plain mean)")
    ps.add_argument("--probabilities", action="store_true",
                    help="also write NAME_probabilities.tif, one uint8 band (probability x 255) per class")
    ps.add_argument("--vectorize", nargs="?", const="gpkg", choices=["gpkg", "geojson", "shp"],
                    help="also write one polygon per connected class region in the scene's CRS (default gpkg)")
    ps.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    add_map_area_flags(ps)
    ps.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pd = tasks.add_parser("detect", help="COCO JSON and DOTA-style txt of whole-scene detections")
    pd.add_argument("--checkpoint", "--model", required=True,
                    help="detection run directory, its detector.safetensors or its exported .onnx")
    pd.add_argument("--images", required=True, nargs="+", help="image folders, files or .txt lists")
    pd.add_argument("--output", required=True, help="folder for detections.json, dota/NAME.txt (and drawn/)")
    pd.add_argument("--draw", action="store_true", help="also write the images with their boxes drawn")
    pd.add_argument("--min-score", type=float, default=None,
                    help="the map outputs and drawings hold the detections scoring at least this (default: the "
                         "operating point chosen on training tiles, else 0.5); detections.json and dota/ hold all")
    pd.add_argument("--vector-format", default="gpkg", choices=["gpkg", "geojson", "shp"],
                    help="file type of the map-coordinate boxes written for georeferenced scenes")
    add_map_area_flags(pd)
    pd.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def add_run_commands(commands: argparse._SubParsersAction) -> None:
    """``pipeline``, ``gap``, ``report`` and ``demo``."""
    pipe = commands.add_parser("pipeline", help="run a chain of stages from a YAML config (skips finished ones)")
    pipe.add_argument("config", help="pipeline YAML (output, source, arms, pretrain, finetune, gap)")
    pipe.add_argument("--from", dest="start", metavar="STAGE", help="re-run this stage and every later one")
    pipe.add_argument("--only", metavar="STAGE", help="run this stage alone")

    gap = commands.add_parser("gap", help="domain gap of a checkpoint between source and target images")
    gap.add_argument("--checkpoint", required=True, help="MAE checkpoint (the decoder gives the reconstruction loss)")
    gap.add_argument("--source", required=True, nargs="+", help="images of the checkpoint's source domain")
    gap.add_argument("--target", required=True, nargs="+", help="target-domain images")
    gap.add_argument("--max-images", type=int, default=256, help="per set (the source gives two sets)")
    gap.add_argument("--output", help="folder for gap.json and gap.md")
    gap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    gap.add_argument("--trust-checkpoint", action="store_true")

    rep = commands.add_parser("report", help="write report.md and report.html of a run directory")
    rep.add_argument("run_dir")

    demo = commands.add_parser("demo", help="the CSPT chain on real NEON aerial scenes: pretraining, tree-crown "
                                            "detection, held-out mAP, report (CPU, minutes)")
    demo.add_argument("--output", default="runs/demo", help="pipeline folder")
    demo.add_argument("--init", help="source MAE checkpoint (default: $CSPT_SOURCE_CHECKPOINT, else the natural-image "
                      "tiny MAE that ships with cspt, cspt:mae-tiny-tinyimagenet; 'random': no source)")


def add_weights_commands(commands: argparse._SubParsersAction) -> None:
    """``export`` and ``info``."""
    export = commands.add_parser("export", help="export weights for timm, Hugging Face or the MAE code, or a "
                                                "fine-tuned model as ONNX or a torch.export archive")
    export.add_argument("source", help="a run directory or any checkpoint the loader accepts")
    export.add_argument("--to", required=True, metavar="FORMAT",
                        help="timm, hf or mae (an encoder); onnx or exported-program (a fine-tuned model)")
    export.add_argument("--output", required=True, help="file (timm: .safetensors, mae: .pth, onnx: .onnx, "
                                                        "exported-program: .pt2) or folder (hf)")
    export.add_argument("--gsd", type=float, help="onnx: ground sample distance of the training data in metres per "
                                                  "pixel, written for QGIS Deepness (its resolution, divided by a "
                                                  "segmenter's resize)")
    export.add_argument("--trust-checkpoint", action="store_true", help="allow unsafe unpickling")

    info = commands.add_parser("info", help="format, architecture and lineage of a checkpoint")
    info.add_argument("checkpoint", help="a checkpoint file, run directory, Hugging Face folder or exported graph")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--trust-checkpoint", action="store_true", help="allow unsafe unpickling")


def add_data_commands(commands: argparse._SubParsersAction) -> None:
    """``shards``, ``stats`` and ``visualize``."""
    shards = commands.add_parser("shards", help="pack an image pool into tar shards for streaming")
    shards_kind = shards.add_subparsers(dest="kind", required=True)
    make = shards_kind.add_parser("make", help="write shard-NNNNNN.tar files (members byte for byte)")
    make.add_argument("data", nargs="+", help="image folders, files or .txt lists")
    make.add_argument("--output", required=True, help="folder for the shards")
    make.add_argument("--max-size", type=float, default=1024, help="megabytes per shard (default 1024)")

    stack = commands.add_parser("stack", help="rasters of any CRS, resolution or sensor on one grid, as one "
                                "multi-band VRT every stage reads")
    stack.add_argument("rasters", nargs="+", help="GeoTIFFs or VRTs, in band order; the first gives the grid")
    stack.add_argument("--output", required=True, help="the stack, NAME.vrt (its parts go in NAME_parts/)")
    stack.add_argument("--target-crs", help="the grid's CRS (default: the first raster's)")
    stack.add_argument("--target-res", type=float, help="the grid's pixel size in its CRS's units (default: the "
                       "first raster's)")
    stack.add_argument("--resampling", default="bilinear", choices=["nearest", "bilinear", "cubic"],
                       help="how rasters are resampled onto the grid (default bilinear; nearest for classes)")

    stats = commands.add_parser("stats", help="per-band mean/std of images, for the mean/std options")
    stats.add_argument("data", nargs="+", help="image folders, files or .txt lists")
    stats.add_argument("--max-images", type=int, default=1000, help="use a seeded sample of this many")
    stats.add_argument("--bands", type=int, nargs="+", help="only these bands, numbered from 1, in this order")
    stats.add_argument("--nodata", type=float, help="a raw value meaning 'no data' (besides each file's own)")
    stats.add_argument("--decibels", choices=["amplitude", "intensity"], help="SAR: values read as decibels")
    stats.add_argument("--despeckle", type=int, help="SAR: an N x N boxcar mean of the intensity before decibels")

    vis = commands.add_parser("visualize", help="MAE reconstruction grid of a checkpoint on some images")
    vis.add_argument("--checkpoint", required=True, help="MAE checkpoint (with decoder)")
    vis.add_argument("--images", required=True, nargs="+", help="image folders, files or .txt lists")
    vis.add_argument("--output", required=True, help="PNG file to write")
    vis.add_argument("--count", type=int, default=8, help="images to show")
    vis.add_argument("--img-size", type=int, help="input size (default: the checkpoint's)")
    vis.add_argument("--mask-ratio", type=float, default=0.75)
    vis.add_argument("--mean", type=float, nargs="+", help="per-band mean (default: ImageNet for RGB)")
    vis.add_argument("--std", type=float, nargs="+", help="per-band std")
    vis.add_argument("--trust-checkpoint", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    """The ``cspt`` parser: global flags and every command."""
    parser = argparse.ArgumentParser(prog="cspt", description="Consecutive pretraining of ViTs for remote sensing")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                        help="decode JPEG/PNG images of at most N pixels (default: what a model records, else "
                        "2**31; 0: no limit)")
    commands = parser.add_subparsers(dest="command", required=True)

    for add in (add_training_commands, add_evaluate_commands, add_predict_commands, add_run_commands,
                add_weights_commands, add_data_commands):
        add(commands)
    return parser


RESERVED = {"command", "task", "kind", "debug", "max_image_pixels", "config", "resume"}


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config values the command line sets (``--max-image-pixels`` before or after the command)."""
    overrides = {k: v for k, v in vars(args).items() if k not in RESERVED}
    if args.max_image_pixels is not None:
        overrides["max_image_pixels"] = args.max_image_pixels
    return overrides


def run_training(args: argparse.Namespace, cls: type, train: Any) -> None:
    """Start a training stage from ``--config`` + flags, or continue one with ``--resume``."""
    overrides = config_overrides(args)
    if args.resume:
        if args.config:
            raise CsptError("--resume continues a run with its saved config; --config cannot change it")
        resume = args.resume if args.resume is not True else overrides.get("output") or True
        if resume is True:
            raise CsptError("--resume needs a run directory (or --output)")
        run_dir = train(cls(), resume=resume, overrides=overrides)
    else:
        run_dir = train(build_config(cls, args.config, overrides))
    print(f"run directory: {run_dir}")


def run_pretrain(args: argparse.Namespace) -> None:
    """``cspt pretrain``: start or continue consecutive MAE pretraining."""
    from cspt.tasks.pretrain import pretrain

    run_training(args, PretrainConfig, pretrain)


def run_finetune(args: argparse.Namespace) -> None:
    """``cspt finetune classify|segment|detect``: start or continue a fine-tune."""
    if args.task == "detect":
        from cspt.tasks.detect import finetune_detect

        run_training(args, DetectConfig, finetune_detect)
        return
    if args.task == "segment":
        from cspt.tasks.segment import finetune_segment

        run_training(args, SegmentConfig, finetune_segment)
        return
    from cspt.tasks.classify import finetune_classify

    run_training(args, ClassifyConfig, finetune_classify)


def print_metrics(metrics: dict[str, Any], where: str) -> None:
    """Print a classification's OA, AA, kappa and image count, then ``where`` (e.g. the output folder)."""
    print(f"OA {metrics['oa']:.4f}  AA {metrics['aa']:.4f}  kappa {metrics['kappa']:.4f}  "
          f"({metrics['images']} images){where}")


def run_probe(args: argparse.Namespace) -> None:
    """``cspt probe``: a kNN or linear probe of frozen encoder features; prints its metrics."""
    from cspt.tasks.probe import run_probe as probe

    config = build_config(ProbeConfig, args.config, config_overrides(args))
    print_metrics(probe(args.kind, config), f"; written to {config.output}" if config.output else "")


def run_evaluate(args: argparse.Namespace) -> None:
    """``cspt evaluate classify|segment|detect``: score a fine-tuned model and print its headline metrics."""
    if args.task == "detect":
        from cspt.tasks.detect import evaluate_detector

        metrics, folder = evaluate_detector(args.checkpoint, args.annotations, args.images, args.format,
                                            args.output, args.device, args.draw, args.max_image_pixels)
        print(f"mAP@0.5 {metrics['map50']:.4f}  mAP@[.5:.95] {metrics['map']:.4f}  ({metrics['scenes']} scenes, "
              f"{metrics['objects']} objects); written to {folder}")
        return
    if args.task == "segment":
        from cspt.tasks.segment import evaluate_segmenter

        metrics, folder = evaluate_segmenter(args.checkpoint, args.images, args.masks, args.output, args.device,
                                             args.blend, max_image_pixels=args.max_image_pixels)
        print(f"mIoU {metrics['miou']:.4f}  OA {metrics['oa']:.4f}  mean F1 {metrics['mean_f1']:.4f}  "
              f"({metrics['tiles']} tiles); written to {folder}")
        return
    if args.scene:
        from cspt.tasks.classify import evaluate_scene_classes, load_classifier

        if not args.masks:
            raise CsptError("--scene needs --masks: one label raster per scene")
        window = args.window or load_classifier(args.checkpoint).info.arch.img_size
        metrics = evaluate_scene_classes(args.checkpoint, args.scene, args.masks, window, args.stride, args.blend,
                                         args.device, args.batch_size, max_image_pixels=args.max_image_pixels)
        print(f"mIoU {metrics['miou']:.4f}  OA {metrics['oa']:.4f}  mean F1 {metrics['mean_f1']:.4f}  "
              f"({metrics['scenes']} scenes, {metrics['invalid_pixels']} pixels without data not scored)")
        if args.output:
            Path(args.output).mkdir(parents=True, exist_ok=True)
            (Path(args.output) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        return
    from cspt.tasks.classify import evaluate_classifier

    metrics, folder = evaluate_classifier(args.checkpoint, args.data, args.output, args.batch_size, args.device,
                                          args.num_workers, args.max_image_pixels)
    print_metrics(metrics, f"; written to {folder}")


def run_predict(args: argparse.Namespace) -> None:
    """``cspt predict classify|segment|detect``: write a model's predictions and print where."""
    if args.task == "detect":
        from cspt.data.aoi import area_from_options
        from cspt.tasks.detect import predict_detector

        folder = predict_detector(args.checkpoint, args.images, args.output, args.draw, args.device,
                                  args.min_score, args.vector_format, args.max_image_pixels,
                                  area_from_options(args.aoi, args.bbox, args.aoi_crs), args.dst_crs)
        print(f"wrote {folder}")
        return
    if args.task == "segment":
        from cspt.data.aoi import area_from_options
        from cspt.tasks.segment import predict_segmenter

        folder = predict_segmenter(args.checkpoint, args.images, args.output, args.draw, args.device, args.blend,
                                   args.probabilities, args.vectorize, args.batch_size, args.max_image_pixels,
                                   area_from_options(args.aoi, args.bbox, args.aoi_crs), args.dst_crs)
        print(f"wrote {folder}")
        return
    if args.scene:
        from cspt.data.aoi import area_from_options
        from cspt.tasks.classify import load_classifier, predict_scene_classes

        window = args.window or load_classifier(args.checkpoint).info.arch.img_size
        folder = predict_scene_classes(args.checkpoint, args.scene, args.output or "maps", window, args.stride,
                                       args.blend, args.device, args.batch_size, args.probabilities,
                                       args.max_image_pixels, area_from_options(args.aoi, args.bbox, args.aoi_crs),
                                       args.dst_crs)
        print(f"wrote {folder}")
        return
    from cspt.tasks.classify import predict_classifier

    if args.aoi or args.bbox or args.dst_crs:
        raise CsptError("--aoi, --bbox and --dst-crs make class maps of --scene inputs; --images gets a CSV")
    path = predict_classifier(args.checkpoint, args.images, args.output or "predictions.csv", args.batch_size,
                              args.device, args.num_workers, args.max_image_pixels)
    print(f"wrote {path}")


def run_pipeline(args: argparse.Namespace) -> None:
    """``cspt pipeline``: run a pipeline config's stages and print the report path."""
    from cspt.pipeline import run_pipeline as pipeline

    print(f"report: {pipeline(args.config, args.start, args.only)}")


def run_gap(args: argparse.Namespace) -> None:
    """``cspt gap``: print a checkpoint's domain gap between source and target images (and write it)."""
    from cspt.metrics import gap_summary
    from cspt.tasks.gap import domain_gap, write_gap

    result = domain_gap(args.checkpoint, args.source, args.target, args.max_images, device=args.device,
                        trust=args.trust_checkpoint, max_image_pixels=args.max_image_pixels)
    for line in gap_summary(result):
        print(line)
    if args.output:
        print(f"wrote {write_gap(result, Path(args.output))}")


def run_report(args: argparse.Namespace) -> None:
    """``cspt report``: write a run directory's report and print its path."""
    from cspt.report import write_run_report

    print(f"report: {write_run_report(args.run_dir)}")


def run_shards(args: argparse.Namespace) -> None:
    """``cspt shards``: pack images into tar shards of at most ``--max-size`` megabytes each."""
    from cspt.data.files import find_images
    from cspt.data.shards import make_shards

    shards = make_shards(find_images(args.data), args.output, int(args.max_size * 2**20))
    if shards:
        print(f"{len(shards)} shards: {args.output}/shard-{{000000..{len(shards) - 1:06d}}}.tar")


def run_stack(args: argparse.Namespace) -> None:
    """``cspt stack``: write the aligned stack of rasters and say what its bands are."""
    import rasterio

    from cspt.data.stacks import write_stack

    stack = write_stack(args.rasters, args.output, args.target_crs, args.target_res, args.resampling)
    with rasterio.open(stack) as src:
        print(f"{stack}: {src.width} x {src.height} px, {src.crs}, pixel {src.res[0]:g}; bands: "
              f"{', '.join(src.descriptions)}")


def run_stats(args: argparse.Namespace) -> None:
    """``cspt stats``: print the per-band mean/std and 2nd/98th percentiles of a set of images."""
    from cspt.data.files import find_images
    from cspt.data.pixels import PixelContract
    from cspt.data.scaling import EIGHT_BIT, data_type, measure_scaling
    from cspt.data.stats import band_statistics

    files = find_images(args.data)
    result = band_statistics(files, args.max_images, bands=args.bands, nodata=args.nodata, decibels=args.decibels,
                             despeckle=args.despeckle)
    for message in result.skipped:
        log.warning("skipped: %s", message)
    dtype = data_type(files)
    bands = len(result.mean)
    print(f"# {result.images} images, {bands} bands, {dtype}; on the 0-1 scale of the type (value / its maximum); "
          f"{result.invalid} pixels without data left out")
    print(f"mean: [{', '.join(f'{v:.6f}' for v in result.mean)}]")
    print(f"std: [{', '.join(f'{v:.6f}' for v in result.std)}]")
    contract = PixelContract((0.5,) * bands, (0.25,) * bands, tuple(args.bands) if args.bands else None,
                             nodata=args.nodata, decibels=args.decibels, despeckle=args.despeckle)
    spread = measure_scaling(files, "percentile", contract)
    print(f"percentile_2: [{', '.join(f'{v:.6f}' for v in spread.low)}]")
    print(f"percentile_98: [{', '.join(f'{v:.6f}' for v in spread.high)}]")
    if dtype not in EIGHT_BIT:
        print(f"# {dtype} data: without --mean/--std, training measures its own scaling (--scale auto: stats); "
              "these mean/std, when passed, apply on the scale of the type")


def run_visualize(args: argparse.Namespace) -> None:
    """``cspt visualize``: write a grid of a checkpoint's MAE reconstructions."""
    from cspt.tasks.visualize import visualize_checkpoint

    path = visualize_checkpoint(args.checkpoint, args.images, args.output, count=args.count,
                                img_size=args.img_size, mask_ratio=args.mask_ratio, mean=args.mean,
                                std=args.std, trust=args.trust_checkpoint, max_image_pixels=args.max_image_pixels)
    print(f"wrote {path}")


def run_demo(args: argparse.Namespace) -> None:
    """``cspt demo``: run the embedded NEON pipeline and print the report path."""
    from cspt.demo import run_demo as demo

    print(f"report: {demo(args.output, args.init)}")


def run_export(args: argparse.Namespace) -> None:
    """``cspt export``: write a checkpoint's weights for timm, hf or mae, or a fine-tuned model as a graph."""
    from cspt.tasks.export_graph import GRAPH_TARGETS, export_graph
    from cspt.weights.export import export_checkpoint

    if args.to in GRAPH_TARGETS:
        print(f"wrote {export_graph(args.source, args.to, args.output, args.gsd)}")
        return
    print(f"wrote {export_checkpoint(args.source, args.to, args.output, args.trust_checkpoint)}")


def run_info(args: argparse.Namespace) -> None:
    """``cspt info``: print a checkpoint's format, architecture, pixels and lineage (or all of it as JSON)."""
    from cspt.weights.export import checkpoint_info
    from cspt.weights.graphs import graph_info, is_graph_file

    graph = is_graph_file(args.checkpoint)
    info = graph_info(args.checkpoint) if graph else checkpoint_info(args.checkpoint, args.trust_checkpoint)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    if graph:
        print(f"file: {info['file']}\nformat: {info['format']}\ntask: {info['task']}")
        print(f"classes: {', '.join(info['classes'] or [])}")
        print("graph: " + "; ".join(f"{k}: {v}" for k, v in info["graph"].items() if k != "check"))
    else:
        print_checkpoint_info(info)
    if info["pixels"]:
        from cspt.data.pixels import PixelContract

        print(f"pixels: {PixelContract.from_dict(info['pixels'], info['file']).describe()}")
    if info.get("terms"):
        print(f"terms: {info['terms']}")
    print("lineage:")
    for number, stage in enumerate(info["lineage"], 1):
        details = ", ".join(f"{k}={v}" for k, v in stage.items() if k not in ("stage", "config"))
        print(f"  {number}. {stage.get('stage')}: {details}")


def print_checkpoint_info(info: dict) -> None:
    """The lines of ``cspt info`` on a checkpoint's format and architecture."""
    arch = info["architecture"]
    print(f"file: {info['file']}\nformat: {info['format']}")
    print(f"tensors: {info['tensors']} ({info['parameters'] / 1e6:.2f} M parameters)")
    print("architecture: " + ", ".join(f"{k}={v}" for k, v in arch.items()))
    print(f"decoder: {'yes' if info['decoder'] else 'no'}")


COMMANDS = {"demo": run_demo, "evaluate": run_evaluate, "export": run_export, "finetune": run_finetune,
            "gap": run_gap, "info": run_info, "pipeline": run_pipeline, "predict": run_predict,
            "pretrain": run_pretrain, "probe": run_probe, "report": run_report, "shards": run_shards,
            "stack": run_stack, "stats": run_stats, "visualize": run_visualize}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cspt`` command line; returns the exit status (2: a cspt error, 3: a prediction wrote what it
    could read but some inputs failed, 130: interrupted)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for library in ("rasterio", "fiona"):  # GDAL's complaints come back as exceptions cspt words in one line
        logging.getLogger(library).setLevel(logging.CRITICAL)
    try:
        COMMANDS[args.command](args)
    except CsptError as err:
        if args.debug:
            raise
        print(f"cspt: error: {user_message(err)}", file=sys.stderr)
        return 3 if isinstance(err, SomeInputsFailed) else 2
    except KeyboardInterrupt:
        print("cspt: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
