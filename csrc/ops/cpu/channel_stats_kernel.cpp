// CPU channel_stats: one read of the activations, per-channel shifted sums in double.
//
// Every element of channel c contributes (x - K_c) and (x - K_c)^2 to double sums,
// with K_c the channel's first value; mean = K + S1/n and M2 = S2 - S1^2/n. Shifting
// by a sample keeps the cancellation small (the "shifted data" algorithm), and since
// all partial sums share K they merge by plain addition across threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common.h"

namespace bd_kernels {
namespace {

// The shift K_c: the channel's first value, or 0 when that is inf/NaN (an infinite shift would
// turn every finite value into inf - inf = NaN).
inline double finite_or_zero(double v) { return std::isfinite(v) ? v : 0.0; }

struct Partial {
  double s1 = 0, s2 = 0;
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
};

// Layout [outer, C, inner]: channel c's values are `outer` runs of `inner` contiguous elements.
// NCHW is [N, C, HW]; [N,C] and channels_last are [N*HW, C, 1].
template <typename scalar_t>
void accumulate(const scalar_t* x, int64_t outer, int64_t C, int64_t inner, const double* K, Partial* out) {
  if (inner > 1) {
    // parallel over channels; each run of `inner` values is a contiguous, vectorizable loop
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double s1 = 0, s2 = 0, lo = out[c].lo, hi = out[c].hi;
        const double k = K[c];
        for (int64_t o = 0; o < outer; ++o) {
          const scalar_t* p = x + (o * C + c) * inner;
          double b1 = 0, b2 = 0, blo = lo, bhi = hi;
#pragma omp simd reduction(+ : b1, b2) reduction(min : blo) reduction(max : bhi)
          for (int64_t i = 0; i < inner; ++i) {
            const double v = static_cast<double>(p[i]);
            const double d = v - k;
            b1 += d;
            b2 += d * d;
            blo = std::min(blo, v);
            bhi = std::max(bhi, v);
          }
          s1 += b1;
          s2 += b2;
          lo = blo;
          hi = bhi;
        }
        out[c] = {s1, s2, lo, hi};
      }
    });
    return;
  }
  // rows of C contiguous channels: parallel over row chunks with per-chunk partials
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 4, outer / 64 + 1));
  std::vector<Partial> partial(chunks * C);
  at::parallel_for(0, chunks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      Partial* acc = partial.data() + b * C;
      const int64_t r0 = outer * b / chunks, r1 = outer * (b + 1) / chunks;
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* p = x + r * C;
        for (int64_t c = 0; c < C; ++c) {
          const double v = static_cast<double>(p[c]);
          const double d = v - K[c];
          acc[c].s1 += d;
          acc[c].s2 += d * d;
          acc[c].lo = std::min(acc[c].lo, v);
          acc[c].hi = std::max(acc[c].hi, v);
        }
      }
    }
  });
  for (int64_t b = 0; b < chunks; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const Partial& p = partial[b * C + c];
      out[c].s1 += p.s1;
      out[c].s2 += p.s2;
      out[c].lo = std::min(out[c].lo, p.lo);
      out[c].hi = std::max(out[c].hi, p.hi);
    }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> channel_stats_cpu(const at::Tensor& input) {
  TORCH_CHECK(input.dim() == 2 || input.dim() == 4, "channel_stats expects [N,C] or [N,C,H,W], got ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "channel_stats expects a floating tensor");
  const int64_t C = input.size(1);
  const int64_t per_channel = C ? input.numel() / C : 0;
  TORCH_CHECK(per_channel > 0, "channel_stats needs at least one value per channel");
  at::Tensor x;
  int64_t outer, inner;
  if (input.dim() == 4 && is_channels_last_only(input)) {
    x = input;  // NHWC memory: rows of C channels
    outer = per_channel;
    inner = 1;
  } else {
    x = input.contiguous();
    outer = input.size(0);
    inner = input.dim() == 4 ? input.size(2) * input.size(3) : 1;
  }
  std::vector<Partial> acc(C);
  std::vector<double> K(C);
  std::vector<char> has_nan(C, 0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_stats_cpu", [&] {
    const scalar_t* p = x.data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) K[c] = finite_or_zero(static_cast<double>(p[c * inner]));
    accumulate<scalar_t>(p, outer, C, inner, K.data(), acc.data());
    // NaN propagates as in torch (mean, M2, min and max all NaN). A NaN makes the sums NaN,
    // but so do +inf and -inf together; only those channels are scanned for a real NaN.
    for (int64_t c = 0; c < C; ++c) {
      if (!std::isnan(acc[c].s1) && !std::isnan(acc[c].s2)) continue;
      for (int64_t o = 0; o < outer && !has_nan[c]; ++o)
        for (int64_t i = 0; i < inner; ++i)
          if (std::isnan(static_cast<double>(p[(o * C + c) * inner + i]))) {
            has_nan[c] = 1;
            break;
          }
    }
  });
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto count = at::full({C}, per_channel, at::TensorOptions().dtype(at::kLong));
  auto mean = at::empty({C}, opts), m2 = at::empty({C}, opts), lo = at::empty({C}, opts), hi = at::empty({C}, opts);
  auto mean_a = mean.accessor<double, 1>(), m2_a = m2.accessor<double, 1>();
  auto lo_a = lo.accessor<double, 1>(), hi_a = hi.accessor<double, 1>();
  const double n = static_cast<double>(per_channel);
  for (int64_t c = 0; c < C; ++c) {
    mean_a[c] = K[c] + acc[c].s1 / n;
    const double m2_c = acc[c].s2 - acc[c].s1 * acc[c].s1 / n;
    m2_a[c] = m2_c < 0.0 ? 0.0 : m2_c;  // rounding can make it slightly negative; NaN stays NaN
    lo_a[c] = has_nan[c] ? std::numeric_limits<double>::quiet_NaN() : acc[c].lo;
    hi_a[c] = has_nan[c] ? std::numeric_limits<double>::quiet_NaN() : acc[c].hi;
  }
  return {count, mean, m2, lo, hi};
}

}  // namespace

TORCH_LIBRARY_IMPL(bd_kernels, CPU, m) { m.impl("channel_stats", &channel_stats_cpu); }

}  // namespace bd_kernels
