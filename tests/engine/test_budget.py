"""The memory budget checked before a run (issue 17): a plan that cannot fit is refused before it allocates."""

from __future__ import annotations

import tracemalloc

import psutil
import pytest

from tiler.engine.budget import check_memory, estimate_actor_memory
from tiler.errors import ConfigError

GIB = 2**30


def test_tile_60000_squared_is_refused_before_anything_allocates() -> None:
    tracemalloc.start()
    try:
        estimate = estimate_actor_memory(
            (60000, 60000), (2048, 2048), channels=3, itemsize=1, classes=4, parameters=10**6, batch_size=8,
            shape=(60000, 60000),
        )
        with pytest.raises(ConfigError, match=r"tiling\.tile=\[60000, 60000\].*available; fix: lower tiling\.tile"):
            check_memory(estimate)  # this machine's psutil.virtual_memory().available
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert estimate.total > psutil.virtual_memory().total
    assert peak < 2**20


def test_a_plan_that_fits_one_actor_but_not_the_pool_names_engine_actors() -> None:
    estimate = estimate_actor_memory(
        (256, 256), (2048, 2048), channels=3, itemsize=1, classes=4, parameters=10**6, batch_size=8
    )
    check_memory(estimate, 4 * GIB)  # ~0.64 GiB: fits
    with pytest.raises(ConfigError, match=r"GiB per actor x 8 actors .*tiling\.block=\[2048, 2048\].*engine\.actors"):
        check_memory(estimate, 4 * GIB, actors=8)


def test_block_is_clipped_to_the_image_and_tiles_are_not() -> None:
    small = estimate_actor_memory((256, 256), (4096, 4096), channels=1, itemsize=4, classes=2, parameters=0,
                                  batch_size=1, shape=(100, 100))
    assert small.block == (100, 100) and small.tile == (256, 256)
    assert small.accumulator == 3 * 100 * 100 * 4 * 2
    assert small.inputs == 2 * 356 * 356 * 1 * 4
    assert small.batch == 1 * 256 * 256 * 3 * 4 * 8


def test_the_estimate_counts_every_block_the_staged_pipeline_holds() -> None:
    def estimate(**kwargs: object):  # type: ignore[no-untyped-def]
        return estimate_actor_memory((256, 256), (2048, 2048), channels=4, itemsize=2, classes=6, parameters=0,
                                     batch_size=8, **kwargs)  # type: ignore[arg-type]

    base, staged = estimate(), estimate(readers=4, writers=2)
    assert staged.inputs == base.inputs * 5 // 2  # four blocks read ahead and one inferring, not two
    assert staged.accumulator == base.accumulator * 3 // 2  # the inferring block and two being written
    tiles = estimate(overlap=(32, 32))
    # 2048 + 256 pixels at a step of 224: 11 tiles of 256 per axis, float32, for the two blocks held
    assert tiles.assembled == 2 * (11 * 256) ** 2 * 4 * 4 and tiles.total == base.total + tiles.assembled
