"""Engines execute a plan of blocks: in-process (``local``) or on a Ray actor pool (``ray``)."""
