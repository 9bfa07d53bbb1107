// masked_conv2d = ATen convolution + a fused per-output-channel epilogue.
//   forward : z = conv(x, W);  y = z * scale[c] + shift[c]     (scale = m + d, shift = b * (mb + db))
//   backward: grad_z = gy * scale[c];  grad_scale[c] = sum(gy * z);  grad_shift[c] = sum(gy)   (one pass)
// Device files provide the two epilogue passes; the convolution is ATen's (oneDNN / cuDNN).
#pragma once

#include "common.h"

namespace bd_kernels {

using EpilogueForward = void (*)(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift, at::Tensor& y);
using EpilogueBackward = void (*)(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& scale,
                                  at::Tensor& grad_z, at::Tensor& grad_scale, at::Tensor& grad_shift);

std::tuple<at::Tensor, at::Tensor> masked_conv2d_forward(const at::Tensor& x, const at::Tensor& weight,
                                                         const at::Tensor& scale, const at::Tensor& shift,
                                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                                         at::IntArrayRef dilation, int64_t groups,
                                                         EpilogueForward epilogue);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& z,
    const at::Tensor& scale, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, std::array<bool, 2> need_input_weight, EpilogueBackward epilogue);

}  // namespace bd_kernels
