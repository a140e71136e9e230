"""The one version source of keras-seqnorm."""

__version__ = "0.1.0"
