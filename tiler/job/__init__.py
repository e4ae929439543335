"""The segment job around the engine, one concept per module.

- :mod:`~tiler.job.refs`: from a config to the engine's references (reader, model) and its executor.
- :mod:`~tiler.job.plan`: planning one input (:func:`~tiler.job.plan.build_plan`, the one place a job is planned).
- :mod:`~tiler.job.outputs`: where the outputs go, and the check that none touches an input or a user's file.
- :mod:`~tiler.job.finish`: finishing an input (exports, score, reports, ``complete``) as steps in workers.
- :mod:`~tiler.job.progress`: the progress bar.
- :mod:`~tiler.job.timings`: where the time went.

:mod:`tiler.segment` joins them: ``SegmentJob``, ``run_many`` and ``run_segment``.
"""
