"""Backdoor attacks on image classifiers and the Label-Smoothed Backdoor Attack (LSBA), with detectors.

``triggers`` (BadNets, Blend, SIG, WaNet on uint8 batches), ``poison`` (which samples, which labels),
``lsba`` (the label probability p_n and stacked triggers), ``detectors`` (STRIP, Neural Cleanse,
spectral signatures) and ``Global.task: backdoor`` (``task.BackdoorTask``, the classification task
with a poisoned training set, attack metrics and a report). Importing the package registers the task.
"""
from paddle_suite.backdoor import detectors, lsba, poison, task, triggers  # noqa: F401
from paddle_suite.backdoor.task import BackdoorTask  # noqa: F401
