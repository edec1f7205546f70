# Optional CuTe/CUTLASS headers from the nvidia-cutlass wheel (no submodules, no downloads).
set(LEAPDEC_CUTLASS_INCLUDE "")
if(LEAPDEC_WITH_CUDA)
  execute_process(COMMAND ${Python_EXECUTABLE} -c
    "import os, cutlass_library as c; p=os.path.join(os.path.dirname(c.__file__), 'source', 'include'); print(p if os.path.isdir(p) else '')"
    OUTPUT_VARIABLE _cutlass_inc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_cutlass_inc)
    set(LEAPDEC_CUTLASS_INCLUDE ${_cutlass_inc} ${LEAPDEC_CUDA_HOME}/include/cccl)
    message(STATUS "leapdec: CUTLASS headers at ${_cutlass_inc}")
  else()
    message(STATUS "leapdec: CUTLASS headers not found (pip install nvidia-cutlass to enable CuTe paths)")
  endif()
endif()
