// CUDA channel_stats: shifted sums in double per (channel, slice) block, then one
// block per channel merges the slices. K_c, the shift, is the channel's first value,
// read on the device (no host sync).
#include <ATen/Dispatch.h>

#include <math_constants.h>

#include "../common.h"
#include "cuda_utils.cuh"

namespace bd_kernels {
namespace {

// As torch: a NaN anywhere makes the statistic NaN (fmin/fmax would drop it).
__device__ inline double nan_min(double a, double b) { return (isnan(a) || isnan(b)) ? CUDART_NAN : fmin(a, b); }
__device__ inline double nan_max(double a, double b) { return (isnan(a) || isnan(b)) ? CUDART_NAN : fmax(a, b); }
__device__ inline double finite_or_zero(double v) { return isfinite(v) ? v : 0.0; }

template <typename scalar_t>
__global__ void partial_kernel(const scalar_t* x, int64_t per_channel, int64_t C, int64_t inner, double* partial) {
  __shared__ double shared[32];
  const int64_t c = blockIdx.y, slices = gridDim.x;
  const double k = finite_or_zero(static_cast<double>(x[channel_element(0, c, C, inner)]));
  double s1 = 0, s2 = 0, lo = CUDART_INF, hi = -CUDART_INF;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < per_channel; e += (int64_t)blockDim.x * slices) {
    const double v = static_cast<double>(x[channel_element(e, c, C, inner)]);
    const double d = v - k;
    s1 += d;
    s2 += d * d;
    lo = nan_min(lo, v);
    hi = nan_max(hi, v);
  }
  s1 = block_sum(s1, shared);
  s2 = block_sum(s2, shared);
  lo = block_extreme<double, false>(lo, shared);
  hi = block_extreme<double, true>(hi, shared);
  if (threadIdx.x == 0) {
    double* out = partial + (c * slices + blockIdx.x) * 4;
    out[0] = s1; out[1] = s2; out[2] = lo; out[3] = hi;
  }
}

template <typename scalar_t>
__global__ void merge_kernel(const scalar_t* x, const double* partial, int64_t slices, int64_t per_channel, int64_t C,
                             int64_t inner, double* mean, double* m2, double* lo, double* hi) {
  __shared__ double shared[32];
  const int64_t c = blockIdx.x;
  double s1 = 0, s2 = 0, mn = CUDART_INF, mx = -CUDART_INF;
  for (int64_t s = threadIdx.x; s < slices; s += blockDim.x) {
    const double* p = partial + (c * slices + s) * 4;
    s1 += p[0]; s2 += p[1]; mn = nan_min(mn, p[2]); mx = nan_max(mx, p[3]);
  }
  s1 = block_sum(s1, shared);
  s2 = block_sum(s2, shared);
  mn = block_extreme<double, false>(mn, shared);
  mx = block_extreme<double, true>(mx, shared);
  if (threadIdx.x == 0) {
    const double n = static_cast<double>(per_channel);
    const double k = finite_or_zero(static_cast<double>(x[channel_element(0, c, C, inner)]));
    mean[c] = k + s1 / n;
    const double m2_c = s2 - s1 * s1 / n;
    m2[c] = m2_c < 0.0 ? 0.0 : m2_c;  // NaN stays NaN, as in torch
    lo[c] = mn;
    hi[c] = mx;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> channel_stats_cuda(const at::Tensor& input) {
  TORCH_CHECK(input.dim() == 2 || input.dim() == 4, "channel_stats expects [N,C] or [N,C,H,W], got ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "channel_stats expects a floating tensor");
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t C = input.size(1);
  const int64_t per_channel = C ? input.numel() / C : 0;
  TORCH_CHECK(per_channel > 0, "channel_stats needs at least one value per channel");
  TORCH_CHECK(C <= 65535, "channel_stats on CUDA supports at most 65535 channels, got ", C);
  const bool rows = input.dim() == 2 || is_channels_last_only(input);
  const at::Tensor x = rows ? (input.dim() == 2 ? input.contiguous() : input) : input.contiguous();
  const int64_t inner = rows ? 1 : input.size(2) * input.size(3);
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(1024, (per_channel + kThreads * 8 - 1) / (kThreads * 8)));
  auto opts = input.options().dtype(at::kDouble);
  auto partial = at::empty({C, slices, 4}, opts);
  auto mean = at::empty({C}, opts), m2 = at::empty({C}, opts), lo = at::empty({C}, opts), hi = at::empty({C}, opts);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_stats_cuda", [&] {
    partial_kernel<scalar_t><<<dim3(slices, C), kThreads, 0, stream>>>(x.data_ptr<scalar_t>(), per_channel, C, inner,
                                                                        partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    merge_kernel<scalar_t><<<C, kThreads, 0, stream>>>(x.data_ptr<scalar_t>(), partial.data_ptr<double>(), slices,
                                                        per_channel, C, inner, mean.data_ptr<double>(),
                                                        m2.data_ptr<double>(), lo.data_ptr<double>(), hi.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  auto count = at::full({C}, per_channel, input.options().dtype(at::kLong));
  return {count, mean, m2, lo, hi};
}

}  // namespace

TORCH_LIBRARY_IMPL(bd_kernels, CUDA, m) { m.impl("channel_stats", &channel_stats_cuda); }

}  // namespace bd_kernels
