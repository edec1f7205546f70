# Python, pybind11 and Torch. Torch is found through torch.utils.cmake_prefix_path (setup.py
# passes it). With a CUDA build of torch, find_package(Torch) also needs the CUDA home, the
# nvrtc library (which pip wheels keep under nvidia/cu*/lib) and an arch list (cuda_setup).
execute_process(COMMAND ${Python_EXECUTABLE} -c "import pybind11; print(pybind11.get_cmake_dir())"
                OUTPUT_VARIABLE _pybind11_dir OUTPUT_STRIP_TRAILING_WHITESPACE)
execute_process(COMMAND ${Python_EXECUTABLE} -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
                OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE)
list(APPEND CMAKE_PREFIX_PATH ${_pybind11_dir} ${_torch_prefix})
find_package(pybind11 CONFIG REQUIRED)

if(LEAPDEC_WITH_CUDA AND NOT CUDA_nvrtc_LIBRARY)
  # pip's CUDA torch ships nvrtc in site-packages/nvidia/cu*/lib (or nvidia/cuda_nvrtc/lib).
  execute_process(COMMAND ${Python_EXECUTABLE} -c
    "import glob, os, torch; r=os.path.dirname(os.path.dirname(torch.__file__)); c=sorted(glob.glob(r+'/nvidia/*/lib/libnvrtc.so*'))+sorted(glob.glob('${LEAPDEC_CUDA_HOME}/lib64/libnvrtc.so*')); print(c[0] if c else '')"
    OUTPUT_VARIABLE _nvrtc OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_nvrtc)
    set(CUDA_nvrtc_LIBRARY ${_nvrtc} CACHE FILEPATH "nvrtc for find_package(Torch)")
  endif()
endif()

# Torch's config can add CUDA flags we don't want on CPU-only builds; keep them scoped.
find_package(Torch REQUIRED)

# Link only the core libraries: no torch_python (the ops need no Python binding of tensors).
set(LEAPDEC_TORCH_LIBS torch c10)
if(LEAPDEC_WITH_CUDA)
  list(APPEND LEAPDEC_TORCH_LIBS c10_cuda torch_cuda)
endif()
# -D_GLIBCXX_USE_CXX11_ABI=... and friends from torch.
separate_arguments(LEAPDEC_TORCH_CXX_FLAGS UNIX_COMMAND "${TORCH_CXX_FLAGS}")
set(LEAPDEC_TORCH_DEFS "")
set(LEAPDEC_TORCH_CUDA_FLAGS "")
foreach(f IN LISTS LEAPDEC_TORCH_CXX_FLAGS)
  if(f MATCHES "^-D")
    list(APPEND LEAPDEC_TORCH_CUDA_FLAGS ${f})
  endif()
endforeach()
message(STATUS "leapdec: torch ${Torch_VERSION} at ${_torch_prefix}")
