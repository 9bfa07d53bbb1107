"""bd's command line (`bd`)."""

__version__ = "0.1.0"


def quiet_library_warnings() -> None:
    """Warnings from torch, torchvision, numpy and ray internals say nothing a bd user can act on;
    bd's own warnings (e.g. the kernels falling back to their reference) stay visible."""
    import warnings

    for module in (r"torch(\..*)?", r"torchvision(\..*)?", r"numpy(\..*)?", r"ray(\..*)?"):
        for category in (UserWarning, FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=module)
