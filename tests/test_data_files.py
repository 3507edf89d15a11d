"""The committed test rasters are what ``tests/data/generate.py`` writes, and each is the kind its name says."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from tests.data.generate import FOLDER, KINDS, generate


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regenerated")
    generate(folder)
    return folder


@pytest.mark.parametrize("kind", list(KINDS))
def test_committed_raster_matches_its_generator(kind, regenerated):
    name, _ = KINDS[kind]
    with rasterio.open(FOLDER / name) as committed, rasterio.open(regenerated / name) as fresh:
        assert committed.profile["dtype"] == fresh.profile["dtype"], name
        assert committed.count == fresh.count and committed.nodata == fresh.nodata, name
        assert committed.crs == fresh.crs and committed.transform == fresh.transform, name
        # bicubic interpolation may differ in the last bit between platforms; integer rounding by one step
        np.testing.assert_allclose(committed.read(), fresh.read(), rtol=0, atol=1.0, equal_nan=True, err_msg=name)


def test_each_raster_is_the_kind_it_names():
    opened = {kind: rasterio.open(FOLDER / name) for kind, (name, _) in KINDS.items()}
    try:
        dtypes = {kind: raster.dtypes[0] for kind, raster in opened.items()}
        assert dtypes == {"float32 DN 0-2047": "float32", "float64 DN 0-2047": "float64",
                          "11-bit uint16": "uint16", "int16 with -9999 borders": "int16",
                          "float32 with NaN, 4 bands": "float32"}
        eleven = opened["11-bit uint16"].read()
        assert eleven.max() <= 2047 and eleven.max() > 255
        border = opened["int16 with -9999 borders"]
        assert border.nodata == -9999 and (border.read() == -9999).mean() > 0.2
        swath = opened["float32 with NaN, 4 bands"]
        assert swath.count == 4 and np.isnan(swath.read()).any() and not np.isnan(swath.read()).all()
    finally:
        for raster in opened.values():
            raster.close()
