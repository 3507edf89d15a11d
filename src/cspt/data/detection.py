"""Object-detection annotations: COCO JSON, DOTA labelTxt, VOC/DIOR XML, HRSC XML and CSV.

Every format is read into :class:`Scene` records: the image path and size, horizontal
boxes ``(x1, y1, x2, y2)`` in pixels, class names, ``difficult`` flags and, where the
format has them, the oriented polygons (kept for later use). Bad input is a one-line
error naming the file (and line): a malformed line, a box entirely outside its image,
an unknown class when the class list is fixed, a missing image.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cspt.data.images import IMAGE_SUFFIXES, TIFF_SUFFIXES, ImageReadError, image_info
from cspt.errors import CsptError

log = logging.getLogger("cspt")

FORMATS = ("auto", "coco", "dota", "voc", "hrsc", "csv", "vector")


@dataclass
class Scene:
    """One annotated image."""

    image: Path
    height: int
    width: int
    boxes: np.ndarray  #: (N, 4) float32 x1, y1, x2, y2
    labels: list[str]
    difficult: np.ndarray  #: (N,) bool
    polygons: np.ndarray | None = None  #: (N, 8) float32 oriented corners, when the format has them
    source: str = ""  #: the annotation file, for messages
    clipped: int = 0  #: boxes that reached past the image and were clipped to it


@dataclass
class Annotations:
    """Scenes and the class list (fixed by the user, or sorted names found)."""

    scenes: list[Scene]
    classes: list[str] = field(default_factory=list)

    def count_boxes(self) -> int:
        return sum(len(s.labels) for s in self.scenes)


def find_image(folder: Path, name: str, source: str) -> Path:
    """``folder/name``, or a file of the same stem with another image suffix (e.g. .tif -> .png)."""
    path = folder / name
    if path.is_file():
        return path
    for suffix in sorted(IMAGE_SUFFIXES):
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise CsptError(f"{source}: image {name} not found in {folder}")


@dataclass
class _Builder:
    """Collects one scene's objects and checks them against the image."""

    image: Path
    source: str
    boxes: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    difficult: list = field(default_factory=list)
    polygons: list = field(default_factory=list)

    def add(self, box: Sequence[float], label: str, difficult: bool = False,
            polygon: Sequence[float] | None = None) -> None:
        self.boxes.append([float(v) for v in box])
        self.labels.append(label)
        self.difficult.append(bool(difficult))
        if polygon is not None:
            self.polygons.append([float(v) for v in polygon])

    def build(self, where: list[str]) -> Scene:
        try:
            info = image_info(self.image)
        except ImageReadError as err:
            raise CsptError(f"{self.source}: {err}") from None
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        for box, place in zip(boxes, where, strict=True):
            x1, y1, x2, y2 = box
            if x2 <= x1 or y2 <= y1:
                raise CsptError(f"{place}: empty box ({x1:g}, {y1:g}, {x2:g}, {y2:g})")
            if x2 <= 0 or y2 <= 0 or x1 >= info.width or y1 >= info.height:
                raise CsptError(f"{place}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) outside the "
                                f"{info.width}x{info.height} image {self.image.name}")
        clipped = boxes.copy()
        clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, info.width)
        clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, info.height)
        polygons = np.asarray(self.polygons, dtype=np.float32) if len(self.polygons) == len(boxes) and \
            self.polygons else None
        return Scene(self.image, info.height, info.width, clipped, list(self.labels),
                     np.asarray(self.difficult, dtype=bool), polygons, self.source,
                     int((clipped != boxes).any(1).sum()))


def read_text(path: Path, what: str) -> str:
    """A text annotation file, or a one-line error naming it when it is not UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise CsptError(f"{path}: not a UTF-8 {what} (byte {err.start}: {err.reason}); "
                        "re-save it as UTF-8") from None
    except OSError as err:
        raise CsptError(f"{path}: cannot read the {what} ({err.strerror})") from None


def polygon_box(points: Sequence[float]) -> list[float]:
    """The horizontal box ``[xmin, ymin, xmax, ymax]`` around polygon corners ``x1 y1 x2 y2 ...``."""
    xs, ys = points[0::2], points[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def read_dota(files: Sequence[Path], images: Path) -> list[Scene]:
    """DOTA ``labelTxt``: ``x1 y1 ... x4 y4 class difficult`` per line (header lines skipped)."""
    scenes = []
    for path in files:
        text = read_text(path, "DOTA label file")
        if not text.strip() and not any(images.glob(f"{glob.escape(path.stem)}.*")):
            log.warning("%s: empty label file without an image: skipped", path)
            continue
        builder, where = _Builder(find_image(images, path.stem + ".png", str(path)), str(path)), []
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields or line.startswith(("imagesource", "gsd")):
                continue
            lead = next((i for i, f in enumerate(fields) if not _is_number(f)), len(fields))
            if lead != 8 or len(fields) < 9:
                raise CsptError(f"{path}:{number}: expected 8 polygon coordinates then a class, found {lead} numbers")
            polygon = [float(f) for f in fields[:8]]
            builder.add(polygon_box(polygon), fields[8], len(fields) > 9 and fields[9] != "0", polygon)
            where.append(f"{path}:{number}")
        scenes.append(builder.build(where))
    return scenes


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _xml_number(node: ET.Element, tag: str, source: str) -> float:
    found = node.find(tag)
    if found is None or found.text is None or not _is_number(found.text.strip()):
        raise CsptError(f"{source}: <{tag}> missing or not a number")
    return float(found.text)


def read_voc(files: Sequence[Path], images: Path) -> list[Scene]:
    """VOC/DIOR XML: ``<object>`` with ``<bndbox>`` (horizontal) or ``<robndbox>`` (DIOR-R corners).

    HRSC2016 files (``<HRSC_Image>``) are recognised and read as well.
    """
    scenes = []
    for path in files:
        root = _parse_xml(path)
        if root.tag == "HRSC_Image":
            scenes.append(_hrsc_scene(path, root, images))
            continue
        name = (root.findtext("filename") or path.stem + ".jpg").strip()
        builder, where = _Builder(find_image(images, name, str(path)), str(path)), []
        for number, obj in enumerate(root.iter("object"), 1):
            place = f"{path}: object {number}"
            label = (obj.findtext("name") or "").strip()
            difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
            if obj.find("bndbox") is not None:
                box = [_xml_number(obj.find("bndbox"), t, place) for t in ("xmin", "ymin", "xmax", "ymax")]
                builder.add(box, label, difficult)
            elif obj.find("robndbox") is not None:
                node = obj.find("robndbox")
                tags = [f"{c}_{corner}" for corner in ("left_top", "right_top", "right_bottom", "left_bottom")
                        for c in ("x", "y")]
                polygon = [_xml_number(node, t, place) for t in tags]
                builder.add(polygon_box(polygon), label, difficult, polygon)
            else:
                raise CsptError(f"{place}: no <bndbox> or <robndbox>")
            where.append(place)
        scenes.append(builder.build(where))
    return scenes


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as err:
        raise CsptError(f"{path}: not valid XML ({err})") from None


def _hrsc_scene(path: Path, root: ET.Element, images: Path) -> Scene:
    """HRSC2016: horizontal ``box_*`` and rotated ``mbox_*`` per ``HRSC_Object``; every object is a ship."""
    name = f"{(root.findtext('Img_FileName') or path.stem).strip()}.{(root.findtext('Img_FileFmt') or 'bmp').strip()}"
    builder, where = _Builder(find_image(images, name, str(path)), str(path)), []
    for number, obj in enumerate(root.iter("HRSC_Object"), 1):
        place = f"{path}: object {number}"
        box = [_xml_number(obj, t, place) for t in ("box_xmin", "box_ymin", "box_xmax", "box_ymax")]
        cx, cy, w, h, angle = (_xml_number(obj, t, place) for t in ("mbox_cx", "mbox_cy", "mbox_w", "mbox_h",
                                                                    "mbox_ang"))
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        polygon = (corners @ rotation.T + [cx, cy]).ravel().tolist()
        builder.add(box, "ship", (obj.findtext("difficult") or "0").strip() != "0", polygon)
        where.append(place)
    return builder.build(where)


def read_coco(path: Path, images: Path) -> list[Scene]:
    """COCO JSON: ``images``, ``annotations`` (``bbox`` = x, y, w, h; ``iscrowd`` counts as difficult)."""
    try:
        data = json.loads(read_text(path, "COCO JSON file"))
        names = {c["id"]: c["name"] for c in data["categories"]}
        builders = {im["id"]: (_Builder(find_image(images, im["file_name"], str(path)), str(path)), [])
                    for im in data["images"]}
        for number, ann in enumerate(data["annotations"], 1):
            x, y, w, h = ann["bbox"]
            builder, where = builders[ann["image_id"]]
            builder.add([x, y, x + w, y + h], names[ann["category_id"]], bool(ann.get("iscrowd", 0)),
                        _quadrilateral(ann.get("segmentation")))
            where.append(f"{path}: annotation {number}")
    except json.JSONDecodeError as err:
        raise CsptError(f"{path}: not valid JSON ({err})") from None
    except (KeyError, TypeError, ValueError) as err:
        raise CsptError(f"{path}: not a COCO detection file (missing or bad {err})") from None
    return [b.build(w) for b, w in builders.values()]


def _quadrilateral(segmentation: object) -> list[float] | None:
    """A COCO polygon with exactly four corners (an oriented box), else None."""
    if isinstance(segmentation, list) and len(segmentation) == 1 and len(segmentation[0]) == 8:
        return segmentation[0]
    return None


def read_csv_boxes(path: Path, images: Path) -> list[Scene]:
    """``image,xmin,ymin,xmax,ymax,label`` rows (DeepForest's ``image_path`` header works too)."""
    rows = list(csv.reader(read_text(path, "box CSV").splitlines()))
    start = 1 if rows and not _is_number(rows[0][1] if len(rows[0]) > 1 else "") else 0
    scenes: dict[str, tuple[_Builder, list[str]]] = {}
    for number, row in enumerate(rows[start:], start + 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 6 or not all(_is_number(v) for v in row[1:5]):
            raise CsptError(f"{path}:{number}: expected image,xmin,ymin,xmax,ymax,label")
        name = row[0].strip()
        if name not in scenes:
            scenes[name] = (_Builder(find_image(images, name, f"{path}:{number}"), str(path)), [])
        builder, where = scenes[name]
        builder.add([float(v) for v in row[1:5]], row[5].strip())
        where.append(f"{path}:{number}")
    return [b.build(w) for b, w in scenes.values()]


FORMAT_OF_SUFFIX = {".json": "coco", ".csv": "csv", ".xml": "voc", ".txt": "dota", ".gpkg": "vector",
                    ".geojson": "vector", ".shp": "vector"}


def read_vector_boxes(labels: Path, images: Path, class_field: str) -> list[Scene]:
    """One scene per GeoTIFF in ``images`` within the labels' extent, with the labels' features over it as
    boxes; a scene inside the extent without any is a scene without objects (its detections are false alarms),
    as an empty DOTA label file. Scenes outside the extent are not labelled by this file (in a folder shared by
    a training and a validation file, they are the other file's) and are left out, counted in the log.
    Unreadable TIFFs are skipped and named in the log."""
    from cspt.data.vector_labels import covers, read_vector_labels, scene_boxes, scene_grid

    features = read_vector_labels(labels, class_field)
    scenes, outside = [], 0
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in TIFF_SUFFIXES):
        try:
            grid = scene_grid(image)
        except ImageReadError as err:
            log.warning("skipped unreadable scene: %s", err)
            continue
        boxes, names, clipped = scene_boxes(features, image, grid)
        if not len(boxes) and not covers(features, image, grid):
            outside += 1
            continue
        scenes.append(Scene(image, grid.height, grid.width, boxes, names, np.zeros(len(boxes), bool),
                            source=str(labels), clipped=clipped))
    if not any(len(scene.boxes) for scene in scenes):
        raise CsptError(f"{labels}: no feature lies over any GeoTIFF scene in {images}")
    if outside:
        log.info("%s: %d GeoTIFF(s) of %s lie outside its extent: not labelled by it, left out", labels, outside,
                 images)
    return scenes


def detect_format(annotations: Path) -> str:
    """The format of an annotation file (by suffix) or folder (XML or labelTxt files in it)."""
    if annotations.is_file():
        return FORMAT_OF_SUFFIX.get(annotations.suffix.lower(), "unknown")
    if annotations.is_dir():
        if any(annotations.glob("*.xml")):
            return "voc"
        if any(annotations.glob("*.txt")):
            return "dota"
    return "unknown"


def read_annotations(annotations: str | Path, images: str | Path, fmt: str = "auto",
                     classes: Sequence[str] | None = None, class_field: str = "class") -> Annotations:
    """Read any supported format; ``classes`` fixes the class list (others are an error).

    ``vector``: boxes or polygons in map coordinates (GeoPackage, GeoJSON, shapefile; any
    CRS) over the georeferenced scenes in ``images``, classed by their ``class_field``.
    """
    annotations, images = Path(annotations), Path(images)
    if not annotations.exists():
        raise CsptError(f"{annotations}: no such annotation file or folder")
    if not images.is_dir():
        raise CsptError(f"{images}: no such images folder")
    fmt = detect_format(annotations) if fmt == "auto" else fmt
    if fmt in ("voc", "hrsc", "dota"):
        pattern = "*.txt" if fmt == "dota" else "*.xml"
        files = [annotations] if annotations.is_file() else sorted(annotations.glob(pattern))
        scenes = read_dota(files, images) if fmt == "dota" else read_voc(files, images)
    elif fmt == "coco":
        scenes = read_coco(annotations, images)
    elif fmt == "csv":
        scenes = read_csv_boxes(annotations, images)
    elif fmt == "vector":
        scenes = read_vector_boxes(annotations, images, class_field)
    else:
        raise CsptError(f"{annotations}: unknown annotation format; pass --format ({', '.join(FORMATS[1:])})")
    if not scenes:
        raise CsptError(f"{annotations}: no annotated images found")
    if classes is not None:
        for scene in scenes:
            unknown = sorted(set(scene.labels) - set(classes))
            if unknown:
                raise CsptError(f"{scene.source}: unknown class {unknown[0]!r} (classes: {', '.join(classes)})")
    found = sorted({label for scene in scenes for label in scene.labels})
    return Annotations(scenes, list(classes) if classes is not None else found)
