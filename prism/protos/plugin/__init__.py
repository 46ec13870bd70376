"""``prism.plugin.*``: see :mod:`prism.protos`."""
