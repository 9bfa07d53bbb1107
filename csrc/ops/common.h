// Shared helpers of bd_kernels' C++ sources.
#pragma once

// Only the headers the ops use, not <ATen/ATen.h>: that one declares every ATen operator and
// tripled the extension's compile time (the demo compiles it on a fresh machine).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

namespace bd_kernels {

// Trigger modes of apply_trigger; the schema takes their names (replace, blend, add).
enum TriggerMode : int64_t { kReplace = 0, kBlend = 1, kAdd = 2 };

// Per-channel affine normalization: out = pixel * scale[c] + shift[c],
// scale = 1 / (255 std), shift = -mean / std (computed once per call, in float).
inline std::pair<at::Tensor, at::Tensor> normalization(const at::Tensor& mean, const at::Tensor& std) {
  auto m = mean.to(at::kFloat).contiguous();
  auto s = std.to(at::kFloat).contiguous();
  return {s.mul(255.0).reciprocal().contiguous(), m.div(s).neg().contiguous()};
}

// A [N,C,H,W] tensor laid out channels_last (and not also NCHW-contiguous, as when C == 1).
inline bool is_channels_last_only(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace bd_kernels
