"""``prism.data.*``: see :mod:`prism.protos`."""
