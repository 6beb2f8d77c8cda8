"""The core layer: what every other layer shares and nothing of ours is imported by.

* :mod:`latentops.core.errors`: the one exception tree.
* :mod:`latentops.core.settings`: the deployment's settings.
* :mod:`latentops.core.orm`: the declarative base every table derives from (one metadata).
* :mod:`latentops.core.tables`: the shared domain tables (who is who, the model catalogue, jobs,
  assets) that governance and the platform both read.
* :mod:`latentops.core.text`: the text rules every layer applies (a blank prompt).
"""
