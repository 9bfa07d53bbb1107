// CUDA apply_trigger: one thread per output element, in output-memory order so that
// writes coalesce (NCHW or channels_last); reads are uint8, the output is written once.
#include <ATen/Dispatch.h>

#include "../apply_trigger.h"
#include "cuda_utils.cuh"

namespace bd_kernels {
namespace {

template <typename out_t>
__global__ void apply_trigger_kernel(TriggerArgs a, out_t* out, int64_t sN, int64_t sC, int64_t sH, int64_t sW,
                                     bool channels_last, int64_t total) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total; idx += (int64_t)blockDim.x * gridDim.x) {
    int64_t n, c, i, j, t;
    if (channels_last) {
      c = idx % a.C; t = idx / a.C; j = t % a.W; t /= a.W; i = t % a.H; n = t / a.H;
    } else {
      j = idx % a.W; t = idx / a.W; i = t % a.H; t /= a.H; c = t % a.C; n = t / a.C;
    }
    // offsets are not range-checked on the host (that would sync); clamping keeps every index
    // below in range and free of overflow, an out-of-range offset reading only black padding
    const int64_t lim = 2 * a.padding + 1;
    const int64_t dy = a.offsets ? max(int64_t(-1), min(a.offsets[2 * n], lim)) : a.padding;
    const int64_t dx = a.offsets ? max(int64_t(-1), min(a.offsets[2 * n + 1], lim)) : a.padding;
    const bool flipped = a.flip && a.flip[n];
    const int64_t sr = i + dy - a.padding;
    const int64_t sc = (flipped ? a.W - 1 - j : j) + dx - a.padding;
    float v = 0.0f;  // padding is black before normalization
    if (sr >= 0 && sr < a.H && sc >= 0 && sc < a.W) {
      const int64_t pix = sr * a.W + sc;
      v = static_cast<float>(a.images[(n * a.C + c) * a.H * a.W + pix]);
      if (a.poisoned && a.poisoned[n]) {
        const float m = a.mask ? a.mask[n * a.mask_n + c * a.mask_c + pix] : 1.0f;
        v = poison_pixel(v, a.pattern[n * a.pattern_n + c * a.H * a.W + pix], m, a.mode, a.alpha);
      }
    }
    out[n * sN + c * sC + i * sH + j * sW] = static_cast<out_t>(v * a.scale[c] + a.shift[c]);
  }
}

at::Tensor apply_trigger_cuda(const at::Tensor& images, const std::optional<at::Tensor>& poisoned,
                              const std::optional<at::Tensor>& pattern, const std::optional<at::Tensor>& mask,
                              c10::string_view mode, double alpha, const at::Tensor& mean, const at::Tensor& std,
                              const std::optional<at::Tensor>& crop_offsets, int64_t padding,
                              const std::optional<at::Tensor>& flip, at::ScalarType out_dtype, bool channels_last) {
  const c10::cuda::CUDAGuard guard(images.device());
  auto p = prepare_trigger(images, poisoned, pattern, mask, mode, alpha, mean, std, crop_offsets, padding, flip,
                           out_dtype, channels_last, /*check_offsets=*/false);
  auto& out = p.out;
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "apply_trigger_cuda", [&] {
    apply_trigger_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        p.args, out.data_ptr<scalar_t>(), out.stride(0), out.stride(1), out.stride(2), out.stride(3), channels_last,
        total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bd_kernels, CUDA, m) { m.impl("apply_trigger", &apply_trigger_cuda); }

}  // namespace bd_kernels
