"""``prism.admin.*``: see :mod:`prism.protos`."""
