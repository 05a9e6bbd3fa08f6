// The ring Engine's methods for GPU tensors: the CUDA kernels' table, the
// transport, the scratch each tensor needs, and start_device. They take device
// addresses, whose owner keeps them alive, so unlike the host methods in
// module.cc they hold no buffer views.
#include "module.h"

#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "buffers.h"
#include "ring.h"

namespace scalecom_ring {

// use_device_kernels({name: address}, transport): the C ABI of csrc/cuda as
// function addresses by name (horovod_scalecom.cuda passes every function of
// the library), and "auto", "staged" or "cuda-aware" (horovod_scalecom.ring).
PyObject* Engine_use_device_kernels(EngineObject* self, PyObject* args) {
  PyObject* table;
  const char* transport;
  if (!PyArg_ParseTuple(args, "O!s", &PyDict_Type, &table, &transport)) return nullptr;
  const std::string mode(transport);
  scalecom::DeviceTransport how;
  if (mode == "auto") how = scalecom::DeviceTransport::kAuto;
  else if (mode == "staged") how = scalecom::DeviceTransport::kStaged;
  else if (mode == "cuda-aware") how = scalecom::DeviceTransport::kCudaAware;
  else {
    PyErr_Format(PyExc_ValueError, "ring allreduce: transport %R: expected 'auto', 'staged' or "
                 "'cuda-aware'", PyTuple_GET_ITEM(args, 1));
    return nullptr;
  }
  scalecom::DeviceKernels k;
  const char* missing = nullptr;
  bool failed = false;
  scalecom::DeviceKernels::each(k, [&](const char* name, auto& fn) {
    if (missing != nullptr || failed) return;
    PyObject* address = PyDict_GetItemString(table, name);   // borrowed
    if (address == nullptr) {
      missing = name;
      return;
    }
    void* a = PyLong_AsVoidPtr(address);
    if (PyErr_Occurred()) {
      failed = true;
      return;
    }
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(a);
  });
  if (failed) return nullptr;
  if (missing != nullptr) {
    PyErr_Format(PyExc_ValueError, "ring allreduce: the CUDA kernel table has no '%s'", missing);
    return nullptr;
  }
  try {
    self->engine->set_device_kernels(k, how);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* Engine_cuda_aware(EngineObject* self, PyObject*) {
  return PyBool_FromLong(self->engine->cuda_aware());
}

PyObject* Engine_device_scratch_bytes(EngineObject* self, PyObject* args) {
  long long numel;
  double ratio;
  if (!PyArg_ParseTuple(args, "Ld", &numel, &ratio)) return nullptr;
  if (numel < 0 || !(ratio > 0.0 && ratio <= 1.0)) {
    PyErr_SetString(PyExc_ValueError, "ring allreduce: numel >= 0 and ratio in (0, 1]");
    return nullptr;
  }
  try {
    return PyLong_FromSize_t(self->engine->device_scratch_bytes(numel, ratio));
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

// start_device([(memory, grad, grad_type, out, numel, step, device, scratch,
// scratch_bytes), ...], ratio, beta): addresses of device memory.
PyObject* Engine_start_device(EngineObject* self, PyObject* args) {
  PyObject* specs;
  double ratio, beta;
  if (!PyArg_ParseTuple(args, "O!dd", &PyList_Type, &specs, &ratio, &beta)) return nullptr;
  if (!check_knobs(ratio, beta)) return nullptr;
  std::vector<scalecom::RingTensor> tensors;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(specs); ++i) {
    PyObject* spec = PyList_GET_ITEM(specs, i);
    PyObject *memory, *grad, *out, *scratch;
    int grad_type, device;
    long long numel, step;
    unsigned long long scratch_bytes;
    if (!PyTuple_Check(spec) ||
        !PyArg_ParseTuple(spec, "OOiOLLiOK", &memory, &grad, &grad_type, &out, &numel, &step,
                          &device, &scratch, &scratch_bytes)) {
      if (!PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "ring allreduce: start_device takes tuples");
      return nullptr;
    }
    scalecom::RingTensor t;
    t.memory = static_cast<float*>(PyLong_AsVoidPtr(memory));
    t.grad = PyLong_AsVoidPtr(grad);
    t.out = static_cast<float*>(PyLong_AsVoidPtr(out));
    t.scratch = PyLong_AsVoidPtr(scratch);
    if (PyErr_Occurred()) return nullptr;
    if (device < 0 || numel < 0) {
      PyErr_SetString(PyExc_ValueError, "ring allreduce: device and numel must be >= 0");
      return nullptr;
    }
    t.grad_type = grad_type;
    t.numel = numel;
    t.step = step;
    t.device = device;
    t.scratch_bytes = scratch_bytes;
    tensors.push_back(t);
  }
  try {
    self->engine->start(std::move(tensors), ratio, static_cast<float>(beta), 1);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

}  // namespace scalecom_ring
