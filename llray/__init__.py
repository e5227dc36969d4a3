"""llray: lifelong (continual) learning on Ray.

Layers, top to bottom: ``llray.data`` (task streams), ``llray.models``,
``llray.strategies``, ``llray.learner`` (``run_stream``, plain PyTorch),
``llray.metrics``, ``llray.results`` (the Parquet store), ``llray.distributed`` (Ray
actors and the sweep driver), ``llray.tuning`` (Ray Tune + Optuna), and on top
``llray.analysis``, ``llray.report``, ``llray.taskonomy``, ``llray.curriculum`` and the
``llray`` command. Importing this package imports nothing else.
"""

__version__ = "0.1.0"
