"""Lightning harness: ``AttnClassifier``, its callbacks, model cost, and programmatic runs.

* :class:`AttnClassifier` (``module.py``) -- backbone + attention block as a LightningModule; its
  ``__init__`` is the ``model:`` section of ``attnzoo fit`` configs.
* ``attnzoo fit|validate|test|predict`` (``cli.py``) -- LightningCLI over it and the data modules.
* :func:`run_fit_test`, :func:`validate_config` (``run.py``) -- the same parser, called from Python
  (the ablation runner).
* :func:`complexity` (``complexity.py``) -- parameters and FLOPs at one input size.
"""
from __future__ import annotations

from .complexity import complexity, inference_throughput
from .module import AttnClassifier
from .run import load_config, run_fit_test, validate_config

__all__ = ["AttnClassifier", "complexity", "inference_throughput", "run_fit_test", "validate_config", "load_config"]
