#include "kernels.h"

#include <c10/util/Exception.h>

namespace rda_ext {

namespace {
constexpr Kernels cpu_kernels{cpu::soft_threshold, cpu::group_shrink, cpu::group_norms,
                              cpu::convergence};
#ifdef RDA_EXT_WITH_CUDA
constexpr Kernels cuda_kernels{cuda::soft_threshold, cuda::group_shrink, cuda::group_norms,
                               cuda::convergence};
#endif
}  // namespace

const Kernels& kernels_for(const at::TensorBase& t) {
  if (t.device().is_cpu()) return cpu_kernels;
#ifdef RDA_EXT_WITH_CUDA
  if (t.device().is_cuda()) return cuda_kernels;
#endif
  TORCH_CHECK(false, "rda_ext: no kernels for device ", t.device(),
              t.device().is_cuda() ? " (this build of rda_ext has no CUDA kernels)" : "");
}

bool cuda_kernels_compiled() {
#ifdef RDA_EXT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace rda_ext
