// Schema of channel_stats: per-channel count, mean, M2, min, max of [N,C,H,W] or [N,C] in one pass.
#include "common.h"

TORCH_LIBRARY_FRAGMENT(bd_kernels, m) {
  m.def("channel_stats(Tensor x) -> (Tensor count, Tensor mean, Tensor m2, Tensor min, Tensor max)");
}
