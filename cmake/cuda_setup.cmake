# Decide whether to build the CUDA kernels and for which architectures.
#   LEAPDEC_CUDA=auto: on when the installed torch is a CUDA build and nvcc is found.
#   TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0a") picks archs; default: the visible GPU, else 8.0;9.0a.
find_package(Python COMPONENTS Interpreter Development.Module REQUIRED)

execute_process(COMMAND ${Python_EXECUTABLE} -c "import torch; print(torch.version.cuda or '')"
                OUTPUT_VARIABLE LEAPDEC_TORCH_CUDA OUTPUT_STRIP_TRAILING_WHITESPACE)

if(NOT DEFINED CMAKE_CUDA_COMPILER)
  if(DEFINED ENV{CUDA_HOME} AND EXISTS "$ENV{CUDA_HOME}/bin/nvcc")
    set(_leapdec_nvcc "$ENV{CUDA_HOME}/bin/nvcc")
  elseif(EXISTS /usr/local/cuda/bin/nvcc)
    set(_leapdec_nvcc /usr/local/cuda/bin/nvcc)
  else()
    find_program(_leapdec_nvcc nvcc)
  endif()
endif()

set(LEAPDEC_WITH_CUDA OFF)
if(LEAPDEC_CUDA STREQUAL "1" OR LEAPDEC_CUDA STREQUAL "auto")
  if(LEAPDEC_TORCH_CUDA AND (_leapdec_nvcc OR DEFINED CMAKE_CUDA_COMPILER))
    set(LEAPDEC_WITH_CUDA ON)
  elseif(LEAPDEC_CUDA STREQUAL "1")
    message(FATAL_ERROR "LEAPDEC_CUDA=1 but torch is not a CUDA build (torch.version.cuda='${LEAPDEC_TORCH_CUDA}') "
                        "or nvcc was not found (set CUDA_HOME)")
  endif()
endif()
message(STATUS "leapdec: CUDA kernels ${LEAPDEC_WITH_CUDA} (torch CUDA '${LEAPDEC_TORCH_CUDA}')")

if(LEAPDEC_WITH_CUDA)
  if(NOT DEFINED CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_COMPILER ${_leapdec_nvcc})
  endif()
  get_filename_component(_leapdec_cuda_bin ${CMAKE_CUDA_COMPILER} DIRECTORY)
  get_filename_component(LEAPDEC_CUDA_HOME ${_leapdec_cuda_bin} DIRECTORY)
  set(CUDA_TOOLKIT_ROOT_DIR ${LEAPDEC_CUDA_HOME} CACHE PATH "CUDA home for find_package(Torch)")
  set(CUDAToolkit_ROOT ${LEAPDEC_CUDA_HOME})

  # Arch list: env TORCH_CUDA_ARCH_LIST, else the visible GPU, else 8.0;9.0a.
  set(_archs "$ENV{TORCH_CUDA_ARCH_LIST}")
  if(NOT _archs)
    execute_process(COMMAND ${Python_EXECUTABLE} -c
      "import torch; c=torch.cuda.get_device_capability() if torch.cuda.is_available() else None; print(f'{c[0]}.{c[1]}' + ('a' if c[0]==9 else '') if c else '')"
      OUTPUT_VARIABLE _archs OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  endif()
  if(NOT _archs)
    set(_archs "8.0;9.0a")
  endif()
  set(ENV{TORCH_CUDA_ARCH_LIST} "${_archs}")  # so Torch's own arch logic agrees
  string(REPLACE " " ";" _archs "${_archs}")
  set(LEAPDEC_CUDA_ARCHITECTURES "")
  foreach(a IN LISTS _archs)
    string(REPLACE "+PTX" "" a "${a}")
    string(REPLACE "." "" a "${a}")
    list(APPEND LEAPDEC_CUDA_ARCHITECTURES "${a}")
  endforeach()
  string(REPLACE ";" " " LEAPDEC_CUDA_ARCH_STRING "${LEAPDEC_CUDA_ARCHITECTURES}")
  set(CMAKE_CUDA_ARCHITECTURES ${LEAPDEC_CUDA_ARCHITECTURES})
  if(NOT DEFINED LEAPDEC_CUDA_STANDARD)
    set(LEAPDEC_CUDA_STANDARD 20)
  endif()
  enable_language(CUDA)
  message(STATUS "leapdec: CUDA archs ${LEAPDEC_CUDA_ARCHITECTURES}, nvcc ${CMAKE_CUDA_COMPILER}")
endif()
