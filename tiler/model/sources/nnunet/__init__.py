"""nnU-Net v2 results folders: the same per-tile predictions as nnU-Net's predictor, without running its code.

* :mod:`.folder` — the folder's plans, dataset labels, configuration and folds, as data;
* :mod:`.network` — the configuration's U-Net rebuilt through allow-lists of classes and layers;
* :mod:`.weights` — checkpoints read weights-only (numpy scalars allowed, nothing else);
* :mod:`.ensemble` — transpose, 2D slicing, mirroring and folds of one tile as a torch module;
* :mod:`.intensity` — nnU-Net's normalisation schemes in tiler's terms, and the pass over an input they need;
* :mod:`.job` — an input checked against the configuration (tiling, spacing, cropping) before a job runs;
* :mod:`.loader` — all of it as a :class:`~tiler.model.loaded.Opened`.

The sliding-window step rule and the gaussian are tiler's own options (``tiling.rule: nnunet``,
``tiling.blend: nnunet``: :func:`tiler.geometry.axis_starts`, :mod:`tiler.blend`).
"""

from tiler.model.sources.nnunet.folder import NnunetSettings, ResultsFolder, is_nnunet_folder
from tiler.model.sources.nnunet.intensity import ImageFacts, measure
from tiler.model.sources.nnunet.job import expected_tiling, job_options
from tiler.model.sources.nnunet.loader import open_nnunet

__all__ = [
    "ImageFacts",
    "NnunetSettings",
    "ResultsFolder",
    "expected_tiling",
    "is_nnunet_folder",
    "job_options",
    "measure",
    "open_nnunet",
]
