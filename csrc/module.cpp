// The Python module bd_kernels._C: importing it registers the ops (TORCH_LIBRARY_FRAGMENT
// in ops/*.cpp) and exposes what the build contains.
// pybind11 alone: the module defines no tensor functions (torch/extension.h would add a minute
// of compilation for nothing).
#include <pybind11/pybind11.h>

#include <string>

#ifndef BD_TORCH_VERSION
#define BD_TORCH_VERSION ""
#endif
#ifndef BD_CUDA_ARCHS
#define BD_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "bd_kernels compiled ops (registered under torch.ops.bd_kernels)";
  m.def("build_info", []() {
    pybind11::dict info;
#ifdef BD_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cuda_archs"] = std::string(BD_CUDA_ARCHS);
    info["built_with_torch"] = std::string(BD_TORCH_VERSION);
    return info;
  });
}
