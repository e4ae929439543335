"""Job configuration: the YAML file a job runs from, validated at load into typed, frozen pydantic models.

A job file has the sections ``input``, ``model``, ``tiling``, ``engine``, ``output`` and ``scoring``
(see ``configs/example.yaml`` for every key with a comment). ``input.path``, ``model.weights`` and
``output.path`` are required; everything else has a default. Unknown keys are errors.

Rules decided here, stated once:

* **Dimensionality and broadcasting.** ``tiling.tile``, ``tiling.overlap``, ``tiling.block`` and
  ``output.chunks`` take one value per spatial axis, (row, col) or (z, y, x); a single int is
  broadcast to every axis. The number of axes is the length of the first of those four given as a
  list; if all are scalars or absent, ``model.spec.spatial_dims``; if there is no spec, 2. Keys left
  out take the defaults for that dimensionality: 2D tile 256, overlap 32, block 2048, chunks 512;
  3D tile 128, overlap 32, block 256, chunks 64 (a 3D block accumulator is block³ float32 per class,
  so 3D blocks are kept small).
* **Relative paths.** ``input.path``, ``model.weights``, ``output.path`` and ``scoring.truth`` written
  in a config *file* are resolved against that file's directory, unless absolute, a GDAL virtual path
  (``/vsicurl/...``, ``/vsis3/...``) or a URL (``s3://...``, ``https://...``). A path given as a
  ``--set`` override is resolved against the current working directory, as a shell user expects.
  :func:`parse_config` on a mapping resolves only when given ``base_dir``.
* **Units.** Tile, overlap, block and chunks are whole pixels (never fractions).
  ``scoring.boundary_width`` below 1 is a fraction of the image diagonal; 1 or more is whole pixels.
* **Identity.** :func:`pixels_hash` covers what the output store holds (the pixels, the block layout,
  class names and colours); :func:`config_hash` covers everything a job writes (that, plus exports and
  scores). Neither covers how the work is scheduled: a job may resume with other actor counts, retries
  or addresses. A store is resumed under the same pixels hash and finished again (exports, scores,
  reports) under another config hash (:mod:`tiler.config.identity` lists each key).

Every failure raises :class:`tiler.errors.ConfigError` with one line per problem naming the file,
the dotted key, the bad value and the fix.

The package, one concept a module (imports only go down this list): :mod:`~tiler.config.problems`
(what a validator reports), :mod:`~tiler.config.fields` (strict field types, per-axis defaults),
:mod:`~tiler.yamlsafe` (reading and writing YAML safely), :mod:`~tiler.config.sections` (the input,
tiling, engine, output and scoring sections), :mod:`~tiler.config.model_section` (the model section),
:mod:`~tiler.config.schema` (:class:`JobConfig` joining them), :mod:`~tiler.config.messages` (validation
errors as one line each), :mod:`~tiler.config.files` (paths resolved, files checked),
:mod:`~tiler.config.overrides` (``--set``), :mod:`~tiler.config.loading` (file or mapping →
:class:`JobConfig`) and :mod:`~tiler.config.identity` (:func:`pixels_hash`, :func:`config_hash`).
"""

from tiler.config.files import check_files, missing_files
from tiler.config.identity import config_hash, pixels_hash
from tiler.config.loading import dump_config, load_config, parse_config
from tiler.config.overrides import apply_overrides
from tiler.config.schema import (
    EngineConfig,
    GdalConfig,
    InputConfig,
    JobConfig,
    ModelConfig,
    ModelSpecConfig,
    MonaiArchitecture,
    NnunetConfig,
    NormalizationConfig,
    OnnxConfig,
    OutputConfig,
    ScoringConfig,
    TilingConfig,
)
from tiler.yamlsafe import MAX_YAML_NODES, load_yaml

__all__ = [
    "MAX_YAML_NODES",
    "EngineConfig",
    "GdalConfig",
    "InputConfig",
    "JobConfig",
    "ModelConfig",
    "ModelSpecConfig",
    "MonaiArchitecture",
    "NnunetConfig",
    "NormalizationConfig",
    "OnnxConfig",
    "OutputConfig",
    "ScoringConfig",
    "TilingConfig",
    "apply_overrides",
    "check_files",
    "config_hash",
    "dump_config",
    "load_config",
    "load_yaml",
    "missing_files",
    "parse_config",
    "pixels_hash",
]
