"""Loading the compiled extension, and what it was built with."""

import torch

# torch's libraries must be loaded before the extension; importing it registers torch.ops.rda_ext.
try:
    from rda_ext import _C
except ImportError as e:
    raise ImportError(
        "rda_ext: the compiled extension rda_ext._C is missing. Build and install the package "
        "(`make install`, or `pip install --no-build-isolation .`), and do not run Python from the "
        "source folder, whose rda_ext/ has no compiled module."
    ) from e


def build_info() -> dict:
    """How this build was compiled: version, torch version it was built against, whether the CUDA
    kernels were compiled, OpenMP and the intra-op threads, plus what this process sees now."""
    info = dict(_C.build_info())
    info["torch_runtime"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return info
