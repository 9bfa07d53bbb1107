// CPU epilogue of masked_conv2d: y = z * scale[c] + shift[c] forward; one fused pass backward
// giving grad_z = gy * scale[c] and the per-channel sums of gy * z and gy.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>

#include <vector>

#include "../masked_conv2d.h"

namespace bd_kernels {
namespace {

template <typename scalar_t>
void forward_kernel(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift, at::Tensor& y) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* zp = z.data_ptr<scalar_t>();
  const scalar_t* sp = scale.data_ptr<scalar_t>();
  const scalar_t* tp = shift.data_ptr<scalar_t>();
  scalar_t* yp = y.data_ptr<scalar_t>();
  const int64_t C = z.size(1), L = z.size(2) * z.size(3), rows = z.numel() / C;
  if (is_channels_last_only(z)) {  // [N*H*W, C]
    at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* zr = zp + r * C;
        scalar_t* yr = yp + r * C;
        for (int64_t c = 0; c < C; ++c) yr[c] = static_cast<opmath_t>(zr[c]) * sp[c] + static_cast<opmath_t>(tp[c]);
      }
    });
    return;
  }
  const int64_t planes = z.size(0) * C;  // [N*C, H*W]
  at::parallel_for(0, planes, std::max<int64_t>(1, 32768 / std::max<int64_t>(L, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const opmath_t s = sp[p % C], t = tp[p % C];
      const scalar_t* __restrict__ zr = zp + p * L;
      scalar_t* __restrict__ yr = yp + p * L;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) yr[i] = static_cast<opmath_t>(zr[i]) * s + t;
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& gy, const at::Tensor& z, const at::Tensor& scale, at::Tensor& gz,
                     at::Tensor& grad_scale, at::Tensor& grad_shift) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* gp = gy.data_ptr<scalar_t>();
  const scalar_t* zp = z.data_ptr<scalar_t>();
  const scalar_t* sp = scale.data_ptr<scalar_t>();
  scalar_t* gzp = gz.data_ptr<scalar_t>();
  const int64_t N = z.size(0), C = z.size(1), L = z.size(2) * z.size(3);
  std::vector<double> sum_gz(C, 0.0), sum_g(C, 0.0);
  if (is_channels_last_only(z)) {
    const int64_t rows = N * L;
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 4, rows / 16 + 1));
    std::vector<double> part_gz(chunks * C, 0.0), part_g(chunks * C, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        double* acc_gz = part_gz.data() + b * C;
        double* acc_g = part_g.data() + b * C;
        for (int64_t r = rows * b / chunks; r < rows * (b + 1) / chunks; ++r) {
          const int64_t base = r * C;
          for (int64_t c = 0; c < C; ++c) {
            const opmath_t g = gp[base + c];
            gzp[base + c] = g * static_cast<opmath_t>(sp[c]);
            acc_gz[c] += static_cast<double>(g) * static_cast<double>(zp[base + c]);
            acc_g[c] += g;
          }
        }
      }
    });
    for (int64_t b = 0; b < chunks; ++b)
      for (int64_t c = 0; c < C; ++c) {
        sum_gz[c] += part_gz[b * C + c];
        sum_g[c] += part_g[b * C + c];
      }
  } else {
    // one pass over contiguous (n, c) planes, in parallel; per-plane sums, then per channel
    std::vector<double> plane_gz(N * C), plane_g(N * C);
    at::parallel_for(0, N * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(L, 1)), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const opmath_t s = sp[p % C];
        const scalar_t* __restrict__ g = gp + p * L;
        const scalar_t* __restrict__ zz = zp + p * L;
        scalar_t* __restrict__ out = gzp + p * L;
        opmath_t b_gz = 0, b_g = 0;
#pragma omp simd reduction(+ : b_gz, b_g)
        for (int64_t i = 0; i < L; ++i) {
          const opmath_t gi = g[i];
          out[i] = gi * s;
          b_gz += gi * static_cast<opmath_t>(zz[i]);
          b_g += gi;
        }
        plane_gz[p] = b_gz;
        plane_g[p] = b_g;
      }
    });
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        sum_gz[c] += plane_gz[n * C + c];
        sum_g[c] += plane_g[n * C + c];
      }
  }
  auto gs = grad_scale.data_ptr<scalar_t>();
  auto gt = grad_shift.data_ptr<scalar_t>();
  for (int64_t c = 0; c < C; ++c) {
    gs[c] = static_cast<scalar_t>(sum_gz[c]);
    gt[c] = static_cast<scalar_t>(sum_g[c]);
  }
}

at::Tensor epilogue_cpu(const at::Tensor& z_in, const at::Tensor& scale, const at::Tensor& shift) {
  check_epilogue(z_in, scale, shift);
  const auto z = activations_layout(z_in);
  auto y = at::empty_like(z);
  if (z.numel() == 0) return y;  // also C == 0, which the per-row arithmetic below divides by
  const auto s = scale.to(z.scalar_type()).contiguous(), t = shift.to(z.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "masked_conv2d_epilogue_cpu",
                                  [&] { forward_kernel<scalar_t>(z, s, t, y); });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> epilogue_backward_cpu(const at::Tensor& grad_y, const at::Tensor& z_in,
                                                                     const at::Tensor& scale) {
  check_epilogue(z_in, scale, scale);
  const auto z = activations_layout(z_in);
  const auto gy = grad_y.contiguous(z.suggest_memory_format());
  auto gz = at::empty_like(z);
  auto grad_scale = at::zeros({z.size(1)}, z.options()), grad_shift = at::zeros({z.size(1)}, z.options());
  if (z.numel() == 0) return {gz, grad_scale, grad_shift};
  const auto s = scale.to(z.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "masked_conv2d_epilogue_backward_cpu",
                                  [&] { backward_kernel<scalar_t>(gy, z, s, gz, grad_scale, grad_shift); });
  return {gz, grad_scale, grad_shift};
}

}  // namespace

TORCH_LIBRARY_IMPL(bd_kernels, CPU, m) {
  m.impl("masked_conv2d_epilogue", &epilogue_cpu);
  m.impl("masked_conv2d_epilogue_backward", &epilogue_backward_cpu);
}

}  // namespace bd_kernels
