// pybind11 module leapdec._C: build information and host-side helpers.
// The torch ops themselves are registered by torch_bindings.cpp when this library loads.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "page_allocator.h"

namespace py = pybind11;

#ifndef LEAPDEC_VERSION
#define LEAPDEC_VERSION "0.0.0"
#endif
// The torch this extension was compiled against (torch.__version__ at build time, set by CMake):
// the extension is ABI-bound to it, so leapdec/__init__.py compares it with the running torch.
#ifndef LEAPDEC_TORCH_VERSION
#define LEAPDEC_TORCH_VERSION ""
#endif

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = LEAPDEC_VERSION;
#ifdef LEAPDEC_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["cuda_archs"] = std::string(LEAPDEC_CUDA_ARCHS);
#ifdef LEAPDEC_WITH_CUTLASS
  info["cutlass"] = true;
#else
  info["cutlass"] = false;
#endif
  info["compiler"] = std::string(__VERSION__);
  info["torch_compiled"] = std::string(LEAPDEC_TORCH_VERSION);
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "leapdec compiled extension: torch ops (torch.ops.leapdec.*) and host helpers";
  m.def("build_info", &build_info, "version, CUDA on/off, CUDA archs, CUTLASS, compiler and torch version of this build");

  py::register_exception<leapdec::OutOfPages>(m, "OutOfPagesError", PyExc_MemoryError);

  py::class_<leapdec::PageAllocator>(m, "PageAllocator", R"doc(
Reference-counted pool of KV-cache page ids 0..num_pages-1.

allocate(n) hands out n free pages (refcount 1) or raises OutOfPagesError and changes nothing;
share(pages) adds a reference (a forked sequence sharing a prefix page); release(pages) drops one
and returns a page to the pool when its count reaches zero.)doc")
      .def(py::init<int64_t>(), py::arg("num_pages"))
      .def("allocate", &leapdec::PageAllocator::allocate, py::arg("n"))
      .def("share", &leapdec::PageAllocator::share, py::arg("pages"))
      .def("release", &leapdec::PageAllocator::release, py::arg("pages"))
      .def("refcount", &leapdec::PageAllocator::refcount, py::arg("page"))
      .def_property_readonly("num_pages", &leapdec::PageAllocator::num_pages)
      .def_property_readonly("num_free", &leapdec::PageAllocator::num_free);
}
