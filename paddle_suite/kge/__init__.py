"""Knowledge-graph embedding capability: SpaceE and baselines, negative sampling, filtered evaluation.

Importing the package registers the ``kge`` task and the ``SpaceE``, ``TransE``, ``RotatE``,
``DistMult`` and ``ComplEx`` architectures.
"""
from paddle_suite.kge import models, task  # noqa: F401  (registration side effects)
