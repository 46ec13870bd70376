"""``prism.proxy.*``: see :mod:`prism.protos`."""
