"""gati: serve a deep classifier faster with learned caches on its hidden layers."""

__version__ = "0.1.0"
