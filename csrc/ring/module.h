// What the two files of the _ring module share: the Engine object's layout
// and the check both start functions make. module.cc holds the type, its host
// methods and their buffer-view bookkeeping; module_device.cc the methods for
// GPU tensors, which take device addresses and hold no views.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <vector>

#include "ring.h"

namespace scalecom_ring {

struct EngineObject {
  PyObject_HEAD
  scalecom::RingEngine* engine;
  std::vector<Py_buffer>* views;
  bool leaked;
};

// ratio and beta, as both start functions take them.
inline bool check_knobs(double ratio, double beta) {
  if ((ratio > 0.0 && ratio <= 1.0) && (beta > 0.0 && beta <= 1.0)) return true;
  PyErr_Format(PyExc_ValueError, "ring allreduce: ratio and beta must lie in (0, 1], got "
                                 "%g and %g", ratio, beta);
  return false;
}

// The Engine's methods for GPU tensors (module_device.cc).
PyObject* Engine_use_device_kernels(EngineObject* self, PyObject* args);
PyObject* Engine_cuda_aware(EngineObject* self, PyObject*);
PyObject* Engine_device_scratch_bytes(EngineObject* self, PyObject* args);
PyObject* Engine_start_device(EngineObject* self, PyObject* args);

}  // namespace scalecom_ring
