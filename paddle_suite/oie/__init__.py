"""Open information extraction: SAOKE notation, readers (SAOKE JSON lines, spansaoke, OIE2016),
fact-level metrics, the Logician sequence-to-sequence model and the ``oie`` training task.

Importing the package registers the ``Logician`` architecture, the ``oie`` task, the
``logician`` loss and the ``saoke_facts`` / ``oie2016_lexical`` metrics. ``saoke``, ``readers``,
``metrics`` and ``tokens`` do not need paddle themselves.
"""
from paddle_suite.oie import model  # noqa: F401  (registration side effect)
from paddle_suite.oie import task  # noqa: F401  (registration side effect)
