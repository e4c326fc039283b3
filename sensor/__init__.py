"""otsensor: a passive OT network sensor — capture, decode, protocols, connection table, store."""

__version__ = "0.1.0"
