"""What each band of an image is: a name, a central wavelength and a ground sample distance.

A band's metadata comes, in this order, from the flags (``--band-names``, ``--wavelengths``), a
sensor preset (``--sensor``), or the GeoTIFF itself (band descriptions that name one preset's
bands, GDAL's ``IMAGERY`` domain ``CENTRAL_WAVELENGTH_UM``, an ENVI-style ``wavelength`` tag).
It decides how an RGB patch embedding grows to the bands (:mod:`cspt.weights.band_adapt`) and
which bands a picture draws. A 3-band checkpoint that records nothing is taken as natural RGB
(:data:`NATURAL_RGB`); data that say nothing are "not known".

Wavelengths are in micrometres (as in TorchGeo and DOFA). A band's kind follows from it:
optical below 3 um, thermal up to 1 mm, radar (SAR) beyond (C-band is about 55,500 um). A
wavelength of 0 means "not known".
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cspt.data.images import image_info, is_raster, open_raster, spectral_bands
from cspt.errors import CsptError

log = logging.getLogger("cspt")

#: beyond this wavelength (um) a band is thermal; beyond ``RADAR_UM`` it is radar
THERMAL_UM = 3.0
RADAR_UM = 1000.0
#: the wavelength (um) given to SAR polarisations in presets: C-band, 5.405 GHz (Sentinel-1)
C_BAND_UM = 55_465.0


@dataclass(frozen=True)
class Band:
    """One band: its name, central wavelength in micrometres (0: unknown) and ground sample distance in
    metres (0: unknown)."""

    name: str
    wavelength: float = 0.0
    gsd: float = 0.0

    @property
    def kind(self) -> str:
        """``optical``, ``thermal``, ``radar`` or ``unknown``, from the wavelength."""
        if not self.wavelength > 0:
            return "unknown"
        return "optical" if self.wavelength < THERMAL_UM else "thermal" if self.wavelength < RADAR_UM else "radar"

    def describe(self) -> str:
        """``name wavelength um gsd m``, what is known of it."""
        at = f" {self.wavelength:g} um" if self.wavelength > 0 else ""
        return f"{self.name}{at}" + (f" {self.gsd:g} m" if self.gsd > 0 else "")


def _bands(*rows: tuple[str, float, float]) -> tuple[Band, ...]:
    return tuple(Band(name, wavelength, gsd) for name, wavelength, gsd in rows)


_S2 = (("B01", 0.443, 60), ("B02", 0.490, 10), ("B03", 0.560, 10), ("B04", 0.665, 10), ("B05", 0.705, 20),
       ("B06", 0.740, 20), ("B07", 0.783, 20), ("B08", 0.842, 10), ("B8A", 0.865, 20), ("B09", 0.945, 60),
       ("B10", 1.375, 60), ("B11", 1.610, 20), ("B12", 2.190, 20))
_WV3 = (("coastal", 0.427, 1.24), ("blue", 0.482, 1.24), ("green", 0.547, 1.24), ("yellow", 0.604, 1.24),
        ("red", 0.660, 1.24), ("red_edge", 0.723, 1.24), ("nir1", 0.824, 1.24), ("nir2", 0.914, 1.24))

#: the band layouts of common products, in the order their files hold them
SENSORS: dict[str, tuple[Band, ...]] = {
    "sentinel2-l1c": _bands(*_S2),
    "sentinel2-l2a": _bands(*(row for row in _S2 if row[0] != "B10")),
    "landsat5": _bands(("B1", 0.485, 30), ("B2", 0.560, 30), ("B3", 0.660, 30), ("B4", 0.830, 30),
                       ("B5", 1.650, 30), ("B6", 11.45, 120), ("B7", 2.215, 30)),
    "landsat8": _bands(("B1", 0.443, 30), ("B2", 0.482, 30), ("B3", 0.561, 30), ("B4", 0.655, 30),
                       ("B5", 0.865, 30), ("B6", 1.609, 30), ("B7", 2.201, 30), ("B8", 0.590, 15),
                       ("B9", 1.373, 30), ("B10", 10.895, 100), ("B11", 12.005, 100)),
    "worldview3": _bands(*_WV3),
    "worldview3-4band": _bands(*(row for row in _WV3 if row[0] in ("blue", "green", "red", "nir1"))),
    "sentinel1-grd": _bands(("VV", C_BAND_UM, 10), ("VH", C_BAND_UM, 10)),
    "sar-quad": _bands(("HH", C_BAND_UM, 0), ("HV", C_BAND_UM, 0), ("VH", C_BAND_UM, 0), ("VV", C_BAND_UM, 0)),
    "rgb": _bands(("red", 0.640, 0), ("green", 0.545, 0), ("blue", 0.465, 0)),
}
SENSORS["landsat9"] = SENSORS["landsat8"]
#: what a 3-band model without band metadata (an ImageNet MAE, a photo) is taken to see
NATURAL_RGB = SENSORS["rgb"]


def sensor_bands(name: str) -> tuple[Band, ...]:
    """A preset's bands; a one-line error listing the presets when ``name`` is not one."""
    key = name.lower().replace("_", "-")
    if key not in SENSORS:
        raise CsptError(f"--sensor {name}: unknown sensor; known: {', '.join(sorted(SENSORS))} (or give "
                        "--band-names and --wavelengths)")
    return SENSORS[key]


def file_bands(path: Path, sensor: str | None = None) -> tuple[Band, ...]:
    """The bands of a file (every band but alpha), from ``sensor`` (its band count checked), else the file's
    own descriptions and tags, else names ``1``, ``2``... with unknown wavelengths."""
    count, descriptions, tagged = _header(path)
    if sensor:
        preset = sensor_bands(sensor)
        if len(preset) != count:
            raise CsptError(f"{path}: has {count} band(s), --sensor {sensor} has {len(preset)} "
                            f"({' '.join(b.name for b in preset)}); select bands with --bands after the preset "
                            "matches the file, or give --band-names/--wavelengths")
        return preset
    named = _preset_named(descriptions)
    if named is not None:
        return named
    return tuple(Band(d or str(i + 1), w) for i, (d, w) in enumerate(zip(descriptions, tagged)))


def _header(path: Path) -> tuple[int, list[str], list[float]]:
    """Band count (alpha left out), descriptions and tagged wavelengths (um, 0: none)."""
    if not is_raster(path):
        info = image_info(path)
        return info.bands, [""] * info.bands, [0.0] * info.bands
    with open_raster(path) as src:
        chosen = spectral_bands(src)
        descriptions = [src.descriptions[b - 1] or "" for b in chosen]
        tagged = [_tagged_wavelength(src.tags(b, ns="IMAGERY") | src.tags(b)) for b in chosen]
        return len(chosen), descriptions, tagged


def _tagged_wavelength(tags: dict[str, str]) -> float:
    """A band's central wavelength in um from GDAL's IMAGERY domain or ENVI-style tags (0: none); nanometres
    where the value or ``wavelength_units`` says so, or where it is above 100."""
    lower = {k.lower(): v for k, v in tags.items()}
    for key in ("central_wavelength_um", "wavelength", "center_wavelength"):
        found = re.match(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(\w*)", lower.get(key, ""))
        if not found:
            continue
        value, units = float(found.group(1)), (found.group(2) or lower.get("wavelength_units", "")).lower()
        nanometres = key != "central_wavelength_um" and (units.startswith("nano") or units == "nm" or value > 100)
        return value * 1e-3 if nanometres else value
    return 0.0


def _preset_named(descriptions: Sequence[str]) -> tuple[Band, ...] | None:
    """The preset bands whose names the descriptions give (e.g. ``B04``), in the file's order; None unless the
    presets that have every name agree on what the bands are (``B2 B3 B4`` is Landsat 5's or Sentinel-2's as
    exported by Earth Engine: unknown, say ``--sensor``)."""
    if not descriptions or not all(descriptions):
        return None
    readings = set()
    for bands in SENSORS.values():
        by_name = {b.name.lower(): b for b in bands}
        if all(d.lower() in by_name for d in descriptions):
            readings.add(tuple(by_name[d.lower()] for d in descriptions))
    return readings.pop() if len(readings) == 1 else None


def select(tokens: Sequence[str | int], available: Sequence[Band], path: Path) -> list[int]:
    """``--bands`` given as names (``B04``) or 1-based numbers, as 1-based numbers; a one-line error naming
    ``path`` for a name or number the file does not have."""
    chosen = []
    names = {b.name.lower(): i + 1 for i, b in enumerate(available)}
    for token in tokens:
        text = str(token).strip()
        if re.fullmatch(r"\d+", text):
            number = int(text)
            if not 1 <= number <= len(available):
                raise CsptError(f"{path}: band {number} is out of range: the file has {len(available)} band(s), "
                                "numbered from 1 (--bands)")
            chosen.append(number)
        elif text.lower() in names:
            chosen.append(names[text.lower()])
        else:
            raise CsptError(f"{path}: has no band named {text!r} (its bands: "
                            f"{' '.join(b.name for b in available)}; --bands takes names or numbers)")
    return chosen


def group_bands(groups: Sequence[str], numbers: Sequence[int], names: Sequence[str] | None
                ) -> tuple[tuple[int, ...], ...]:
    """``--band-groups`` (each group its bands by name or by number as in ``--bands``, comma-separated) as
    0-based positions among the model's bands (file band ``numbers``, named ``names``); a token of digits is a
    file band number, as in ``--bands``. One-line errors for a band the model does not take, or one left out
    or given twice."""
    by_name = {name.lower(): i for i, name in enumerate(names or [])}
    by_number = {number: i for i, number in enumerate(numbers)}
    result = []
    for group in groups:
        positions = []
        for token in filter(None, (t.strip() for t in str(group).split(","))):
            if re.fullmatch(r"\d+", token) and int(token) in by_number:
                positions.append(by_number[int(token)])
            elif not re.fullmatch(r"\d+", token) and token.lower() in by_name:
                positions.append(by_name[token.lower()])
            else:
                labels = " ".join(names or map(str, numbers))
                raise CsptError(f"--band-groups: the model takes no band {token!r} (its bands: {labels})")
        result.append(tuple(positions))
    used = sorted(b for group in result for b in group)
    if used != list(range(len(numbers))):
        labels = list(names or map(str, numbers))
        missing = [labels[i] for i in range(len(numbers)) if i not in used]
        twice = sorted({labels[i] for i in used if used.count(i) > 1})
        raise CsptError(f"--band-groups {' '.join(map(str, groups))}: every model band must be in exactly one group"
                        + (f"; left out: {' '.join(missing)}" if missing else "")
                        + (f"; given twice: {' '.join(twice)}" if twice else ""))
    return tuple(result)


def config_band_groups(config: dict, in_chans: int) -> tuple[tuple[int, ...], ...] | None:
    """The 0-based band groups a resolved config's values (``band_groups``, ``bands``, ``band_names``) say, for
    a model of ``in_chans`` bands; None without groups."""
    if not config.get("band_groups"):
        return None
    numbers = [int(b) for b in config.get("bands") or []] or list(range(1, in_chans + 1))
    return group_bands(config["band_groups"], numbers, config.get("band_names"))


def group_labels(groups: Sequence[Sequence[int]], numbers: Sequence[int], names: Sequence[str] | None) -> list[str]:
    """Band groups (0-based model bands) as ``--band-groups`` values: names where known (none of digits only),
    else file numbers."""
    named = names and not any(re.fullmatch(r"\d+", name) for name in names)
    labels = list(names) if named else [str(n) for n in numbers]
    return [",".join(labels[b] for b in group) for group in groups]


def given_bands(count: int, names: Sequence[str] | None, wavelengths: Sequence[float] | None,
                gsd: Sequence[float] | None, found: Sequence[Band]) -> tuple[Band, ...]:
    """The selected bands' metadata: ``found`` (the file's, already selected) overridden by explicit flags."""
    for flag, values in (("--band-names", names), ("--wavelengths", wavelengths), ("--band-gsd", gsd)):
        if values and len(values) != count:
            raise CsptError(f"{flag}: {len(values)} value(s) for {count} band(s)")
    bands = list(found) if len(found) == count else [Band(str(i + 1)) for i in range(count)]
    return tuple(Band(names[i] if names else b.name,
                      float(wavelengths[i]) if wavelengths else b.wavelength,
                      float(gsd[i]) if gsd else b.gsd) for i, b in enumerate(bands))


def describe(bands: Sequence[Band]) -> str:
    """The bands in one line, for logs and reports."""
    return ", ".join(b.describe() for b in bands)


def is_radar(bands: Sequence[Band] | None) -> bool:
    """Whether every band is a radar band (SAR: no colour augmentation, no colour pictures)."""
    return bool(bands) and all(b.kind == "radar" for b in bands)


def nearest(bands: Sequence[Band], wavelength: float, tolerance: float = math.inf) -> int | None:
    """The index of the optical band nearest ``wavelength`` (None: none within ``tolerance`` um)."""
    optical = [(abs(b.wavelength - wavelength), i) for i, b in enumerate(bands) if b.kind == "optical"]
    if not optical:
        return None
    gap, index = min(optical)
    return index if gap <= tolerance else None


#: the wavelength windows (um) a picture looks for: red, green, blue, near-infrared
_WINDOWS = {"red": (0.62, 0.70), "green": (0.50, 0.59), "blue": (0.43, 0.51), "nir": (0.76, 0.90)}


def display_order(bands: Sequence[Band] | None, count: int) -> tuple[list[int], str]:
    """The three bands (0-based) a picture shows as red, green and blue, and what the picture is: true colour
    where the bands hold red, green and blue, else false colour (near-infrared, red, green), else the first
    three bands (grey for one or two)."""
    found = {}
    for colour, (low, high) in _WINDOWS.items():
        inside = [(abs(b.wavelength - (low + high) / 2), i) for i, b in enumerate(bands or [])
                  if low <= b.wavelength <= high]
        if inside:
            found[colour] = min(inside)[1]
    if {"red", "green", "blue"} <= found.keys():
        return [found["red"], found["green"], found["blue"]], "true colour"
    if {"nir", "red", "green"} <= found.keys():
        return [found["nir"], found["red"], found["green"]], "false colour (near-infrared, red, green)"
    if count >= 3:
        names = [bands[i].name for i in range(3)] if bands else ["1", "2", "3"]
        return [0, 1, 2], "bands " + ", ".join(names) + " as red, green, blue"
    return [0, 0, 0], "grey"


#: how far (um) a student's band may be from the teacher's to stand in for it
STAND_IN_UM = 0.1


def stand_ins(wanted: Sequence[Band], available: Sequence[Band]) -> list[int | None]:
    """For each ``wanted`` band, the 0-based index of the optical ``available`` band nearest to it within
    ``STAND_IN_UM`` (None: none, or ``wanted`` is not an optical band)."""
    return [nearest(available, band.wavelength, STAND_IN_UM) if band.kind == "optical" else None for band in wanted]


def claims(source: Sequence[Band], target: Sequence[Band], tolerance: float) -> dict[int, int]:
    """Each optical ``source`` band's nearest optical ``target`` band within ``tolerance`` um (0-based indices,
    source -> target); a target band two source bands reach goes to the nearer one."""
    found: dict[int, int] = {}
    for s, band in enumerate(source):
        t = nearest(target, band.wavelength, tolerance) if band.kind == "optical" else None
        if t is None:
            continue
        rival = next((r for r, taken in found.items() if taken == t), None)
        if rival is None or abs(target[t].wavelength - band.wavelength) < abs(target[t].wavelength -
                                                                              source[rival].wavelength):
            found.pop(rival, None)
            found[s] = t
    return found


@dataclass(frozen=True)
class BandFeed:
    """Which bands of another source's files (a replay pool of another sensor) feed which model bands."""

    read: tuple[int, ...]  #: the source bands read, 1-based, one per model band fed, in the model's order
    feeds: tuple[int | None, ...]  #: per model band, its source band's position in ``read`` (None: masked out)


def band_feed(model: Sequence[Band], source: Sequence[Band]) -> BandFeed | None:
    """Each source band feeds the model band nearest it within ``STAND_IN_UM`` (:func:`claims`: a photo's red
    feeds red, not also red-edge); None when no model band is fed."""
    fed = {t: s for s, t in claims(source, model, STAND_IN_UM).items()}
    if not fed:
        return None
    order = sorted(fed)
    return BandFeed(tuple(fed[t] + 1 for t in order), tuple(order.index(t) if t in fed else None
                                                            for t in range(len(model))))
