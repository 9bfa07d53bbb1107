// Schema of apply_trigger (poison selected rows, crop/flip, uint8 -> float, normalize, in one
// pass) and the argument validation both device kernels share.
#include "apply_trigger.h"

TORCH_LIBRARY_FRAGMENT(bd_kernels, m) {
  m.def(
      "apply_trigger(Tensor images, Tensor? poisoned, Tensor? pattern, Tensor? mask, str mode, float alpha, "
      "Tensor mean, Tensor std, Tensor? crop_offsets, int padding, Tensor? flip, ScalarType out_dtype, "
      "bool channels_last) -> Tensor");
}

namespace bd_kernels {

int64_t trigger_mode(c10::string_view mode) {
  if (mode == "replace") return kReplace;
  if (mode == "blend") return kBlend;
  TORCH_CHECK(mode == "add", "apply_trigger: mode must be replace, blend or add, got ", mode);
  return kAdd;
}

PreparedTrigger prepare_trigger(const at::Tensor& images, const std::optional<at::Tensor>& poisoned,
                                const std::optional<at::Tensor>& pattern, const std::optional<at::Tensor>& mask,
                                c10::string_view mode, double alpha, const at::Tensor& mean, const at::Tensor& std,
                                const std::optional<at::Tensor>& crop_offsets, int64_t padding,
                                const std::optional<at::Tensor>& flip, at::ScalarType out_dtype, bool channels_last,
                                bool check_offsets) {
  TORCH_CHECK(images.scalar_type() == at::kByte && images.dim() == 4, "apply_trigger: images must be uint8 [N,C,H,W]");
  const int64_t mode_code = trigger_mode(mode);
  TORCH_CHECK(padding >= 0 && padding <= kMaxPadding, "apply_trigger: padding must be in [0, ", kMaxPadding, "], got ",
              padding);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16 || out_dtype == at::kDouble,
              "apply_trigger: out_dtype must be a floating type");
  PreparedTrigger p;
  TriggerArgs& a = p.args;
  const auto dev = images.device();
  auto keep = [&](at::Tensor t) -> at::Tensor {
    TORCH_CHECK(t.device() == dev, "apply_trigger: all tensors must be on ", dev, ", got one on ", t.device());
    p.keep.push_back(t);
    return t;
  };
  const auto img = keep(images.contiguous());
  const int64_t N = img.size(0), C = img.size(1), H = img.size(2), W = img.size(3);
  TORCH_CHECK(mean.numel() == C && std.numel() == C, "apply_trigger: mean and std need ", C, " values");
  auto norm = normalization(mean, std);
  a.images = img.data_ptr<uint8_t>();
  a.N = N; a.C = C; a.H = H; a.W = W;
  a.mode = mode_code; a.alpha = static_cast<float>(alpha); a.padding = padding;
  a.scale = keep(norm.first).data_ptr<float>();
  a.shift = keep(norm.second).data_ptr<float>();
  if (poisoned && pattern) {
    const auto pois = keep(poisoned->to(at::kBool).contiguous());
    TORCH_CHECK(pois.numel() == N, "apply_trigger: poisoned must have N=", N, " entries");
    const auto pat = keep(pattern->to(at::kFloat).contiguous());
    TORCH_CHECK((pat.dim() == 3 && pat.size(0) == C && pat.size(1) == H && pat.size(2) == W) ||
                    (pat.dim() == 4 && pat.size(0) == N && pat.size(1) == C && pat.size(2) == H && pat.size(3) == W),
                "apply_trigger: pattern must be [C,H,W] or [N,C,H,W], got ", pat.sizes());
    a.poisoned = pois.data_ptr<bool>();
    a.pattern = pat.data_ptr<float>();
    a.pattern_n = pat.dim() == 4 ? C * H * W : 0;
    if (mask) {
      const auto msk = keep(mask->to(at::kFloat).contiguous());
      const bool per_sample = msk.dim() == 4;
      TORCH_CHECK((msk.dim() == 3 || (per_sample && msk.size(0) == N)), "apply_trigger: mask must be [1|C,H,W] or [N,1|C,H,W], got ", msk.sizes());
      const int64_t mc = msk.size(per_sample ? 1 : 0);
      TORCH_CHECK((mc == 1 || mc == C) && msk.size(-2) == H && msk.size(-1) == W,
                  "apply_trigger: mask must be [1|C,H,W] or [N,1|C,H,W], got ", msk.sizes());
      a.mask = msk.data_ptr<float>();
      a.mask_c = mc == 1 ? 0 : H * W;
      a.mask_n = per_sample ? mc * H * W : 0;
    }
  }
  if (crop_offsets) {
    const auto off = keep(crop_offsets->to(at::kLong).contiguous());
    TORCH_CHECK(off.numel() == 2 * N, "apply_trigger: crop_offsets must be [N,2]");
    if (check_offsets && N > 0) {
      TORCH_CHECK(off.min().item<int64_t>() >= 0 && off.max().item<int64_t>() <= 2 * padding,
                  "apply_trigger: crop offsets must lie in [0, 2*padding]");
    }
    a.offsets = off.data_ptr<int64_t>();
  }
  if (flip) {
    const auto flp = keep(flip->to(at::kBool).contiguous());
    TORCH_CHECK(flp.numel() == N, "apply_trigger: flip must have N entries");
    a.flip = flp.data_ptr<bool>();
  }
  p.out = at::empty({N, C, H, W}, img.options().dtype(out_dtype),
                    channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  return p;
}

}  // namespace bd_kernels
