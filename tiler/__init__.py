"""tiler: tiled inference for images too big for memory, on Ray.

Arrays are indexed (row, col) in 2D and (z, y, x) in 3D everywhere; channel-first
arrays are (C, H, W) / (C, D, H, W). Geographic bounds are (left, bottom, right, top).
"""

__version__ = "0.1.0"
