"""NixFleet: a declarative NixOS fleet manager."""

__version__ = "0.1.0"
