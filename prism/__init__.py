"""Prism: a data-access proxy on Trio."""

__version__ = "0.1.0"
