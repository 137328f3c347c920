"""Open information extraction: SAOKE notation, readers (SAOKE JSON lines, spansaoke, OIE2016),
fact-level metrics and the Logician sequence-to-sequence model.

Importing the package registers the ``Logician`` architecture. ``saoke``, ``readers``,
``metrics`` and ``tokens`` do not need paddle themselves.
"""
from paddle_suite.oie import model  # noqa: F401  (registration side effect)
