// apply_trigger's arguments as raw pointers, shared by the CPU and CUDA kernels,
// and the host-side validation that builds them.
#pragma once

#include <vector>

#include "common.h"

#ifdef __CUDACC__
#define BD_HOST_DEVICE __host__ __device__
#else
#define BD_HOST_DEVICE
#endif

namespace bd_kernels {

// Largest padding accepted: far beyond any augmentation, small enough that no index computed
// from it (offsets lie in [0, 2 * padding]) can overflow int64.
constexpr int64_t kMaxPadding = int64_t{1} << 20;

struct TriggerArgs {
  const uint8_t* images = nullptr;  // [N,C,H,W] contiguous
  const bool* poisoned = nullptr;   // [N] or null (no row poisoned)
  const float* pattern = nullptr;   // [C,H,W] or [N,C,H,W]
  int64_t pattern_n = 0;            // stride between samples (0 when shared)
  const float* mask = nullptr;      // [1|C,H,W] or [N,1|C,H,W] or null (all ones)
  int64_t mask_n = 0, mask_c = 0;   // strides (mask_c = 0 for a one-channel mask)
  int64_t mode = kReplace;
  float alpha = 1.0f;
  const float* scale = nullptr;     // [C]: 1 / (255 std)
  const float* shift = nullptr;     // [C]: -mean / std
  const int64_t* offsets = nullptr; // [N,2] (dy, dx) or null (centre: no shift)
  int64_t padding = 0;
  const bool* flip = nullptr;       // [N] or null
  int64_t N = 0, C = 0, H = 0, W = 0;
};

BD_HOST_DEVICE inline float poison_pixel(float v, float p, float m, int64_t mode, float alpha) {
  if (mode == kReplace) return v + m * (p - v);
  if (mode == kBlend) return v + alpha * m * (p - v);
  const float s = v + m * p;
  return s < 0.0f ? 0.0f : (s > 255.0f ? 255.0f : s);
}

// Validated, contiguous inputs (owned by `keep`) and the output tensor of one call.
struct PreparedTrigger {
  TriggerArgs args;
  std::vector<at::Tensor> keep;
  at::Tensor out;
};

// check_offsets reads the offsets' range on the host: done on CPU only (on CUDA it would sync;
// there the kernel clamps each offset into [-1, 2 * padding + 1], where an out-of-range offset
// only reads black padding).
PreparedTrigger prepare_trigger(const at::Tensor& images, const std::optional<at::Tensor>& poisoned,
                                const std::optional<at::Tensor>& pattern, const std::optional<at::Tensor>& mask,
                                c10::string_view mode, double alpha, const at::Tensor& mean, const at::Tensor& std,
                                const std::optional<at::Tensor>& crop_offsets, int64_t padding,
                                const std::optional<at::Tensor>& flip, at::ScalarType out_dtype, bool channels_last,
                                bool check_offsets);

}  // namespace bd_kernels
