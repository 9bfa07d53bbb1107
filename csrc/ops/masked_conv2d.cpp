// Schemas of masked_conv2d and its backward, and their device-independent part (the ATen convolution).
#include "masked_conv2d.h"

TORCH_LIBRARY_FRAGMENT(bd_kernels, m) {
  // Returns (y, z): z = conv(x, W) is kept for the backward pass (grad of scale needs it).
  m.def(
      "masked_conv2d(Tensor x, Tensor weight, Tensor scale, Tensor shift, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> (Tensor, Tensor)");
  // Returns (grad_x, grad_weight, grad_scale, grad_shift); grad_x / grad_weight are empty when not needed.
  m.def(
      "masked_conv2d_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor z, Tensor scale, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, bool[2] need_input_weight) -> (Tensor, Tensor, Tensor, Tensor)");
}

namespace bd_kernels {

static void check_epilogue_args(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift) {
  const auto c = z.size(1);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == c, "masked_conv2d: scale must be [", c, "], got ", scale.sizes());
  TORCH_CHECK(shift.dim() == 1 && shift.size(0) == c, "masked_conv2d: shift must be [", c, "], got ", shift.sizes());
}

std::tuple<at::Tensor, at::Tensor> masked_conv2d_forward(const at::Tensor& x, const at::Tensor& weight,
                                                         const at::Tensor& scale, const at::Tensor& shift,
                                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                                         at::IntArrayRef dilation, int64_t groups,
                                                         EpilogueForward epilogue) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, "masked_conv2d expects 4-D input and weight");
  auto z = at::convolution(x, weight, std::nullopt, stride, padding, dilation, false, {0, 0}, groups);
  check_epilogue_args(z, scale, shift);
  auto y = at::empty_like(z);
  epilogue(z, scale.to(z.scalar_type()).contiguous(), shift.to(z.scalar_type()).contiguous(), y);
  return {y, z};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& z,
    const at::Tensor& scale, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, std::array<bool, 2> need_input_weight, EpilogueBackward epilogue) {
  auto gy = grad_y.contiguous(z.suggest_memory_format());
  auto grad_z = at::empty_like(z);
  auto grad_scale = at::empty({z.size(1)}, z.options());
  auto grad_shift = at::empty({z.size(1)}, z.options());
  epilogue(gy, z, scale.to(z.scalar_type()).contiguous(), grad_z, grad_scale, grad_shift);
  at::Tensor grad_x, grad_w;
  if (need_input_weight[0] || need_input_weight[1]) {
    auto grads = at::convolution_backward(grad_z, x, weight, std::nullopt, stride, padding, dilation, false, {0, 0},
                                          groups, {need_input_weight[0], need_input_weight[1], false});
    grad_x = std::get<0>(grads);
    grad_w = std::get<1>(grads);
  }
  if (!grad_x.defined()) grad_x = at::empty({0}, x.options());
  if (!grad_w.defined()) grad_w = at::empty({0}, weight.options());
  return {grad_x, grad_w, grad_scale, grad_shift};
}

}  // namespace bd_kernels
