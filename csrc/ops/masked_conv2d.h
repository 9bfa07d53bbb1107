// masked_conv2d's epilogue: the argument checks and activation layout shared by the CPU and
// CUDA kernels (defined in masked_conv2d.cpp, beside the schema).
#pragma once

#include "common.h"

namespace bd_kernels {

// z [N,C,H,W]; scale and shift [C], all on z's device.
void check_epilogue(const at::Tensor& z, const at::Tensor& scale, const at::Tensor& shift);

// channels_last activations stay as they are; anything else becomes NCHW-contiguous.
at::Tensor activations_layout(const at::Tensor& z);

}  // namespace bd_kernels
