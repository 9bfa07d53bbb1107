// Schemas of masked_conv2d's fused epilogue. The convolution itself is ATen's
// (oneDNN / cuDNN, with autograd's native backward); these ops add the per-output-channel
//   forward : y = z * scale[c] + shift[c]            (scale = m + d, shift = b * (mb + db))
//   backward: grad_z = gy * scale[c],  grad_scale[c] = sum(gy * z),  grad_shift[c] = sum(gy)
// each in one pass over the activations.
#include "masked_conv2d.h"

TORCH_LIBRARY_FRAGMENT(bd_kernels, m) {
  m.def("masked_conv2d_epilogue(Tensor z, Tensor scale, Tensor shift) -> Tensor");
  m.def("masked_conv2d_epilogue_backward(Tensor grad_y, Tensor z, Tensor scale) -> (Tensor, Tensor, Tensor)");
}

namespace bd_kernels {

void check_epilogue(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift) {
  TORCH_CHECK(z.dim() == 4, "masked_conv2d_epilogue expects [N,C,H,W] activations, got ", z.sizes());
  const auto c = z.size(1);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == c, "masked_conv2d_epilogue: scale must be [", c, "], got ", scale.sizes());
  TORCH_CHECK(shift.dim() == 1 && shift.size(0) == c, "masked_conv2d_epilogue: shift must be [", c, "], got ", shift.sizes());
  TORCH_CHECK(scale.device() == z.device() && shift.device() == z.device(), "masked_conv2d_epilogue: tensors on different devices");
}

at::Tensor activations_layout(const at::Tensor& z) {
  // keep channels_last activations as they are; anything else becomes NCHW-contiguous
  return is_channels_last_only(z) ? z : z.contiguous();
}

}  // namespace bd_kernels
