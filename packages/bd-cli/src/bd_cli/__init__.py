"""bd's command line (`bd`)."""

__version__ = "0.1.0"
