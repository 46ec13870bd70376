"""``google.*``: see :mod:`prism.protos`."""
