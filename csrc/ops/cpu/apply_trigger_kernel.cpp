// CPU apply_trigger: one pass per output row (n, c, i), parallel over rows.
// Clean rows take a branch-free inner loop over the in-bounds column span
// (vectorized by the compiler for the unflipped, contiguous case); only the
// poisoned rows pay for the trigger arithmetic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "../apply_trigger.h"

namespace bd_kernels {
namespace {

inline int64_t clamp_to(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

template <typename out_t>
void run(const TriggerArgs& a, out_t* out, int64_t sN, int64_t sC, int64_t sH, int64_t sW) {
  const int64_t rows = a.N * a.C * a.H;
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(a.W, 1)), [&](int64_t begin, int64_t end) {
    // (n, c, i) of the first row, then stepped without divisions (int64 division per
    // 32-pixel row would cost more than the pixels themselves)
    int64_t n = begin / (a.C * a.H), c = (begin / a.H) % a.C, i = begin % a.H;
    for (int64_t r = begin; r < end; ++r, (++i == a.H ? (i = 0, (++c == a.C ? (c = 0, ++n) : 0)) : 0)) {
      const int64_t dy = a.offsets ? a.offsets[2 * n] : a.padding;
      const int64_t dx = a.offsets ? a.offsets[2 * n + 1] : a.padding;
      const bool flipped = a.flip && a.flip[n];
      const float scale = a.scale[c], shift = a.shift[c];
      const out_t black = static_cast<out_t>(shift);  // padding is black before normalization
      out_t* dst = out + n * sN + c * sC + i * sH;
      const int64_t sr = i + dy - a.padding;
      if (sr < 0 || sr >= a.H) {
        for (int64_t j = 0; j < a.W; ++j) dst[j * sW] = black;
        continue;
      }
      // in-bounds output columns [j_lo, j_hi): source column sc = (flipped ? W-1-j : j) + dx - padding
      // lies in [0, W). Both ends are clamped into [0, W], so no offset or padding, however large,
      // makes a loop below leave the row.
      const int64_t shift_cols = dx - a.padding;
      const int64_t j_lo = clamp_to(flipped ? shift_cols : -shift_cols, 0, a.W);
      const int64_t j_hi = std::max(j_lo, clamp_to(flipped ? a.W + shift_cols : a.W - shift_cols, 0, a.W));
      for (int64_t j = 0; j < j_lo; ++j) dst[j * sW] = black;
      for (int64_t j = j_hi; j < a.W; ++j) dst[j * sW] = black;
      const uint8_t* src = a.images + ((n * a.C + c) * a.H + sr) * a.W;
      const bool poisoned = a.poisoned && a.poisoned[n] && a.pattern;
      if (!poisoned) {
        if (!flipped && sW == 1) {
          const uint8_t* s = src + shift_cols;
          for (int64_t j = j_lo; j < j_hi; ++j) dst[j] = static_cast<out_t>(static_cast<float>(s[j]) * scale + shift);
        } else if (flipped && sW == 1) {
          // read forwards (vectorizable), write backwards: dst[j_hi-1-k] = f(src[sc_lo+k])
          const uint8_t* s = src + (a.W - j_hi + shift_cols);
          out_t* d = dst + j_hi - 1;
          const int64_t len = j_hi - j_lo;
          for (int64_t k = 0; k < len; ++k) d[-k] = static_cast<out_t>(static_cast<float>(s[k]) * scale + shift);
        } else {
          for (int64_t j = j_lo; j < j_hi; ++j) {
            const int64_t sc = (flipped ? a.W - 1 - j : j) + shift_cols;
            dst[j * sW] = static_cast<out_t>(static_cast<float>(src[sc]) * scale + shift);
          }
        }
        continue;
      }
      const float* pat = a.pattern + n * a.pattern_n + (c * a.H + sr) * a.W;
      const float* msk = a.mask ? a.mask + n * a.mask_n + c * a.mask_c + sr * a.W : nullptr;
      for (int64_t j = j_lo; j < j_hi; ++j) {
        const int64_t sc = (flipped ? a.W - 1 - j : j) + shift_cols;
        const float v = poison_pixel(static_cast<float>(src[sc]), pat[sc], msk ? msk[sc] : 1.0f, a.mode, a.alpha);
        dst[j * sW] = static_cast<out_t>(v * scale + shift);
      }
    }
  });
}

at::Tensor apply_trigger_cpu(const at::Tensor& images, const std::optional<at::Tensor>& poisoned,
                             const std::optional<at::Tensor>& pattern, const std::optional<at::Tensor>& mask,
                             c10::string_view mode, double alpha, const at::Tensor& mean, const at::Tensor& std,
                             const std::optional<at::Tensor>& crop_offsets, int64_t padding,
                             const std::optional<at::Tensor>& flip, at::ScalarType out_dtype, bool channels_last) {
  auto p = prepare_trigger(images, poisoned, pattern, mask, mode, alpha, mean, std, crop_offsets, padding, flip,
                           out_dtype, channels_last, /*check_offsets=*/true);
  auto& out = p.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "apply_trigger_cpu", [&] {
    run<scalar_t>(p.args, out.data_ptr<scalar_t>(), out.stride(0), out.stride(1), out.stride(2), out.stride(3));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bd_kernels, CPU, m) { m.impl("apply_trigger", &apply_trigger_cpu); }

}  // namespace bd_kernels
