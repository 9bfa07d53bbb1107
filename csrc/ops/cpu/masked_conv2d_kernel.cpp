// CPU epilogues of masked_conv2d: y = z * scale[c] + shift[c] forward; one fused pass backward
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
      const scalar_t* zr = zp + p * L;
      scalar_t* yr = yp + p * L;
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
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const opmath_t s = sp[c];
        double a_gz = 0, a_g = 0;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t base = (n * C + c) * L;
          opmath_t b_gz = 0, b_g = 0;
#pragma omp simd reduction(+ : b_gz, b_g)
          for (int64_t i = 0; i < L; ++i) {
            const opmath_t g = gp[base + i];
            gzp[base + i] = g * s;
            b_gz += g * static_cast<opmath_t>(zp[base + i]);
            b_g += g;
          }
          a_gz += b_gz;
          a_g += b_g;
        }
        sum_gz[c] = a_gz;
        sum_g[c] = a_g;
      }
    });
  }
  auto gs = grad_scale.data_ptr<scalar_t>();
  auto gt = grad_shift.data_ptr<scalar_t>();
  for (int64_t c = 0; c < C; ++c) {
    gs[c] = static_cast<scalar_t>(sum_gz[c]);
    gt[c] = static_cast<scalar_t>(sum_g[c]);
  }
}

void epilogue_forward_cpu(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift, at::Tensor& y) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "masked_conv2d_forward_cpu",
                                  [&] { forward_kernel<scalar_t>(z, scale, shift, y); });
}

void epilogue_backward_cpu(const at::Tensor& gy, const at::Tensor& z, const at::Tensor& scale, at::Tensor& gz,
                           at::Tensor& grad_scale, at::Tensor& grad_shift) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "masked_conv2d_backward_cpu",
                                  [&] { backward_kernel<scalar_t>(gy, z, scale, gz, grad_scale, grad_shift); });
}

std::tuple<at::Tensor, at::Tensor> masked_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                     const at::Tensor& scale, const at::Tensor& shift,
                                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                                     at::IntArrayRef dilation, int64_t groups) {
  return masked_conv2d_forward(x, weight, scale, shift, stride, padding, dilation, groups, &epilogue_forward_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& z,
    const at::Tensor& scale, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, std::array<bool, 2> need) {
  return masked_conv2d_backward(grad_y, x, weight, z, scale, stride, padding, dilation, groups, need,
                                &epilogue_backward_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(bd_kernels, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_cpu);
}

}  // namespace bd_kernels
