// Shared helpers of bd_kernels' C++ sources.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

namespace bd_kernels {

// Trigger modes of apply_trigger; the schema takes their names (replace, blend, add).
enum TriggerMode : int64_t { kReplace = 0, kBlend = 1, kAdd = 2 };

// Per-channel affine normalization: out = pixel * scale[c] + shift[c],
// scale = 1 / (255 std), shift = -mean / std (computed once per call, in float).
inline std::pair<at::Tensor, at::Tensor> normalization(const at::Tensor& mean, const at::Tensor& std) {
  auto m = mean.to(at::kFloat).contiguous();
  auto s = std.to(at::kFloat).contiguous();
  return {(1.0 / (255.0 * s)).contiguous(), (-m / s).contiguous()};
}

// A [N,C,H,W] tensor laid out channels_last (and not also NCHW-contiguous, as when C == 1).
inline bool is_channels_last_only(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace bd_kernels
