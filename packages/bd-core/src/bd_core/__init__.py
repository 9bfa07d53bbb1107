"""bd_core: datasets, mitigation sets, models, attacks, training, metrics and storage."""

__version__ = "0.1.0"
