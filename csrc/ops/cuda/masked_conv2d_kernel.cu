// CUDA epilogue of masked_conv2d (the convolution itself is cuDNN through ATen and autograd).
// forward : y = z * scale[c] + shift[c]                               (elementwise)
// backward: grad_z = gy * scale[c], partial sums of gy * z and gy per (channel, slice), merged per channel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "../masked_conv2d.h"
#include "cuda_utils.cuh"

namespace bd_kernels {
namespace {

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* z, const scalar_t* scale, const scalar_t* shift, scalar_t* y,
                               int64_t total, int64_t C, int64_t inner) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)blockDim.x * gridDim.x) {
    const int64_t c = (i / inner) % C;
    y[i] = static_cast<scalar_t>(static_cast<opmath_t>(z[i]) * static_cast<opmath_t>(scale[c]) +
                                 static_cast<opmath_t>(shift[c]));
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* gy, const scalar_t* z, const scalar_t* scale, scalar_t* gz,
                                int64_t per_channel, int64_t C, int64_t inner, double* partial) {
  using opmath_t = at::opmath_type<scalar_t>;
  __shared__ double shared[32];
  const int64_t c = blockIdx.y, slices = gridDim.x;
  const opmath_t s = scale[c];
  double a_gz = 0, a_g = 0;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < per_channel; e += (int64_t)blockDim.x * slices) {
    const int64_t i = channel_element(e, c, C, inner);
    const opmath_t g = gy[i];
    gz[i] = static_cast<scalar_t>(g * s);
    a_gz += static_cast<double>(g) * static_cast<double>(z[i]);
    a_g += static_cast<double>(g);
  }
  a_gz = block_sum(a_gz, shared);
  a_g = block_sum(a_g, shared);
  if (threadIdx.x == 0) {
    partial[(c * slices + blockIdx.x) * 2] = a_gz;
    partial[(c * slices + blockIdx.x) * 2 + 1] = a_g;
  }
}

template <typename scalar_t>
__global__ void merge_kernel(const double* partial, int64_t slices, scalar_t* grad_scale, scalar_t* grad_shift) {
  __shared__ double shared[32];
  const int64_t c = blockIdx.x;
  double a_gz = 0, a_g = 0;
  for (int64_t s = threadIdx.x; s < slices; s += blockDim.x) {
    a_gz += partial[(c * slices + s) * 2];
    a_g += partial[(c * slices + s) * 2 + 1];
  }
  a_gz = block_sum(a_gz, shared);
  a_g = block_sum(a_g, shared);
  if (threadIdx.x == 0) {
    grad_scale[c] = static_cast<scalar_t>(a_gz);
    grad_shift[c] = static_cast<scalar_t>(a_g);
  }
}

int64_t inner_of(const at::Tensor& z) { return is_channels_last_only(z) ? 1 : z.size(2) * z.size(3); }

at::Tensor epilogue_cuda(const at::Tensor& z_in, const at::Tensor& scale_in, const at::Tensor& shift_in) {
  check_epilogue(z_in, scale_in, shift_in);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const auto z = activations_layout(z_in);
  const auto scale = scale_in.to(z.scalar_type()).contiguous(), shift = shift_in.to(z.scalar_type()).contiguous();
  auto y = at::empty_like(z);
  const int64_t total = z.numel();
  if (total == 0) return y;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "masked_conv2d_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        z.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), total,
        z.size(1), inner_of(z));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> epilogue_backward_cuda(const at::Tensor& grad_y, const at::Tensor& z_in,
                                                                      const at::Tensor& scale_in) {
  check_epilogue(z_in, scale_in, scale_in);
  const c10::cuda::CUDAGuard guard(z_in.device());
  const auto z = activations_layout(z_in);
  const auto gy = grad_y.contiguous(z.suggest_memory_format());
  const auto scale = scale_in.to(z.scalar_type()).contiguous();
  auto gz = at::empty_like(z);
  auto grad_scale = at::zeros({z.size(1)}, z.options()), grad_shift = at::zeros({z.size(1)}, z.options());
  const int64_t C = z.size(1), per_channel = C ? z.numel() / C : 0;
  if (per_channel == 0) return {gz, grad_scale, grad_shift};
  TORCH_CHECK(C <= 65535, "masked_conv2d on CUDA supports at most 65535 output channels, got ", C);
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(512, (per_channel + kThreads * 8 - 1) / (kThreads * 8)));
  auto partial = at::empty({C, slices, 2}, z.options().dtype(at::kDouble));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "masked_conv2d_backward_cuda", [&] {
    backward_kernel<scalar_t><<<dim3(slices, C), kThreads, 0, stream>>>(
        gy.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(), gz.data_ptr<scalar_t>(),
        per_channel, C, inner_of(z), partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    merge_kernel<scalar_t><<<C, kThreads, 0, stream>>>(partial.data_ptr<double>(), slices,
                                                        grad_scale.data_ptr<scalar_t>(), grad_shift.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gz, grad_scale, grad_shift};
}

}  // namespace

TORCH_LIBRARY_IMPL(bd_kernels, CUDA, m) {
  m.impl("masked_conv2d_epilogue", &epilogue_cuda);
  m.impl("masked_conv2d_epilogue_backward", &epilogue_backward_cuda);
}

}  // namespace bd_kernels
