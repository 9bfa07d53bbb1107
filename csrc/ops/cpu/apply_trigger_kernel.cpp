// CPU apply_trigger: one pass per output row (n, c, i), parallel over rows.
// Clean rows take a branch-free inner loop over the in-bounds column span
// (vectorized by the compiler for the unflipped, contiguous case); only the
// poisoned rows pay for the trigger arithmetic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "../common.h"

namespace bd_kernels {
namespace {

struct TriggerArgs {
  const uint8_t* images;
  const bool* poisoned;   // [N] or null
  const float* pattern;   // [C,H,W] or [N,C,H,W] or null
  int64_t pattern_n;      // stride between samples (0 when shared)
  const float* mask;      // [1|C,H,W] or [N,1|C,H,W] or null (all ones)
  int64_t mask_n, mask_c; // strides (mask_c = 0 for one mask channel)
  int64_t mode;
  float alpha;
  const float* scale;     // [C]
  const float* shift;     // [C]
  const int64_t* offsets; // [N,2] or null
  int64_t padding;
  const bool* flip;       // [N] or null
  int64_t N, C, H, W;
};

inline float poison_pixel(float v, float p, float m, int64_t mode, float alpha) {
  if (mode == kReplace) return v + m * (p - v);
  if (mode == kBlend) return v + alpha * m * (p - v);
  return std::min(255.0f, std::max(0.0f, v + m * p));
}

template <typename out_t>
void run(const TriggerArgs& a, out_t* out, int64_t sN, int64_t sC, int64_t sH, int64_t sW) {
  const int64_t rows = a.N * a.C * a.H;
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(a.W, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (a.C * a.H), c = (r / a.H) % a.C, i = r % a.H;
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
      // in-bounds output columns: source column sc = (flipped ? W-1-j : j) + dx - padding in [0, W)
      const int64_t shift_cols = dx - a.padding;
      const int64_t j_lo = flipped ? std::max<int64_t>(0, shift_cols) : std::max<int64_t>(0, -shift_cols);
      const int64_t j_hi = flipped ? std::min<int64_t>(a.W, a.W + shift_cols) : std::min<int64_t>(a.W, a.W - shift_cols);
      for (int64_t j = 0; j < j_lo; ++j) dst[j * sW] = black;
      for (int64_t j = std::max(j_hi, j_lo); j < a.W; ++j) dst[j * sW] = black;
      const uint8_t* src = a.images + ((n * a.C + c) * a.H + sr) * a.W;
      const bool poisoned = a.poisoned && a.poisoned[n] && a.pattern;
      if (!poisoned) {
        if (!flipped && sW == 1) {
          const uint8_t* s = src + shift_cols;
          for (int64_t j = j_lo; j < j_hi; ++j) dst[j] = static_cast<out_t>(static_cast<float>(s[j]) * scale + shift);
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
                             int64_t mode, double alpha, const at::Tensor& mean, const at::Tensor& std,
                             const std::optional<at::Tensor>& crop_offsets, int64_t padding,
                             const std::optional<at::Tensor>& flip, at::ScalarType out_dtype, bool channels_last) {
  TORCH_CHECK(images.scalar_type() == at::kByte && images.dim() == 4, "apply_trigger: images must be uint8 [N,C,H,W]");
  TORCH_CHECK(mode >= kReplace && mode <= kAdd, "apply_trigger: mode must be 0 (replace), 1 (blend) or 2 (add)");
  TORCH_CHECK(padding >= 0, "apply_trigger: padding must be >= 0");
  const auto img = images.contiguous();
  const int64_t N = img.size(0), C = img.size(1), H = img.size(2), W = img.size(3);
  TORCH_CHECK(mean.numel() == C && std.numel() == C, "apply_trigger: mean/std need ", C, " values");
  auto [scale, shift] = normalization(mean, std);

  TriggerArgs a{};
  a.images = img.data_ptr<uint8_t>();
  a.N = N; a.C = C; a.H = H; a.W = W;
  a.mode = mode; a.alpha = static_cast<float>(alpha); a.padding = padding;
  a.scale = scale.data_ptr<float>(); a.shift = shift.data_ptr<float>();

  at::Tensor pois, pat, msk, off, flp;
  if (poisoned && pattern) {
    pois = poisoned->to(at::kBool).contiguous();
    TORCH_CHECK(pois.numel() == N, "apply_trigger: poisoned must have N=", N, " entries");
    pat = pattern->to(at::kFloat).contiguous();
    TORCH_CHECK((pat.dim() == 3 && pat.size(0) == C && pat.size(1) == H && pat.size(2) == W) ||
                    (pat.dim() == 4 && pat.size(0) == N && pat.size(1) == C && pat.size(2) == H && pat.size(3) == W),
                "apply_trigger: pattern must be [C,H,W] or [N,C,H,W], got ", pat.sizes());
    a.poisoned = pois.data_ptr<bool>();
    a.pattern = pat.data_ptr<float>();
    a.pattern_n = pat.dim() == 4 ? C * H * W : 0;
    if (mask) {
      msk = mask->to(at::kFloat).contiguous();
      const bool per_sample = msk.dim() == 4;
      const int64_t mc = msk.size(per_sample ? 1 : 0);
      TORCH_CHECK((msk.dim() == 3 || (per_sample && msk.size(0) == N)) && (mc == 1 || mc == C) &&
                      msk.size(-2) == H && msk.size(-1) == W,
                  "apply_trigger: mask must be [1|C,H,W] or [N,1|C,H,W], got ", msk.sizes());
      a.mask = msk.data_ptr<float>();
      a.mask_c = mc == 1 ? 0 : H * W;
      a.mask_n = per_sample ? mc * H * W : 0;
    }
  }
  if (crop_offsets) {
    off = crop_offsets->to(at::kLong).contiguous();
    TORCH_CHECK(off.numel() == 2 * N, "apply_trigger: crop_offsets must be [N,2]");
    TORCH_CHECK(N == 0 || (off.min().item<int64_t>() >= 0 && off.max().item<int64_t>() <= 2 * padding),
                "apply_trigger: crop offsets must lie in [0, 2*padding]");
    a.offsets = off.data_ptr<int64_t>();
  }
  if (flip) {
    flp = flip->to(at::kBool).contiguous();
    TORCH_CHECK(flp.numel() == N, "apply_trigger: flip must have N entries");
    a.flip = flp.data_ptr<bool>();
  }
  auto out = at::empty({N, C, H, W}, img.options().dtype(out_dtype),
                       channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "apply_trigger_cpu", [&] {
    run<scalar_t>(a, out.data_ptr<scalar_t>(), out.stride(0), out.stride(1), out.stride(2), out.stride(3));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bd_kernels, CPU, m) { m.impl("apply_trigger", &apply_trigger_cpu); }

}  // namespace bd_kernels
