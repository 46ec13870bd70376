"""``prism.config.*``: see :mod:`prism.protos`."""
