// Schema of apply_trigger: poison selected rows, crop/flip, uint8 -> float, normalize, in one pass.
#include "common.h"

TORCH_LIBRARY_FRAGMENT(bd_kernels, m) {
  m.def(
      "apply_trigger(Tensor images, Tensor? poisoned, Tensor? pattern, Tensor? mask, int mode, float alpha, "
      "Tensor mean, Tensor std, Tensor? crop_offsets, int padding, Tensor? flip, ScalarType out_dtype, "
      "bool channels_last) -> Tensor");
}
