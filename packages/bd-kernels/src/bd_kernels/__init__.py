"""bd_kernels: the three fused ops of bd and their pure-torch twins.

`bd_kernels.ops` is the public API. When the compiled extension is absent every
op runs its reference implementation from `bd_kernels.reference` (and warns once).
"""

from bd_kernels.ops import (
    ChannelStats,
    apply_trigger,
    build_info,
    channel_stats,
    has_extension,
    masked_conv2d,
    masked_conv_path,
)

__all__ = [
    "ChannelStats",
    "apply_trigger",
    "build_info",
    "channel_stats",
    "has_extension",
    "masked_conv2d",
    "masked_conv_path",
]
__version__ = "0.1.0"
