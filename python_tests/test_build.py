import shutil

import torch

import rda_ext


def test_build_info_reports_the_build():
    info = rda_ext.build_info()
    assert info["version"] == rda_ext.__version__
    assert info["torch_built_against"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["intra_op_threads"] == torch.get_num_threads()
    assert isinstance(info["openmp"], bool)


def test_cuda_kernels_are_compiled_when_the_toolchain_allows():
    # CI runs on a machine without a GPU but with nvcc and a CUDA torch: the CUDA kernels must be
    # compiled there, so a silent fall-back to a CPU-only build fails here.
    nvcc = shutil.which("nvcc") or shutil.which("/usr/local/cuda/bin/nvcc")
    if torch.version.cuda and nvcc:
        assert rda_ext.build_info()["cuda_kernels"]
    if torch.cuda.is_available():
        assert rda_ext.build_info()["cuda_kernels"]
