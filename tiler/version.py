"""The version of tiler, in one leaf module.

The package (``tiler.__version__``), pyproject's dynamic version, the stores' ``tiler_version`` attribute, the STAC
Items' ``processing:software`` and the DICOM SEGs' software version all read it here, so a module low in the layers
never imports the package root for it.
"""

__version__ = "0.1.0"
