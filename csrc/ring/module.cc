// CPython binding of the ring engine: horovod_scalecom._ring.Engine. It takes
// any C-contiguous float32 buffers (numpy arrays; torch CPU tensors through
// .numpy()), so both frameworks share it. The buffers are held until wait()
// has seen every queued exchange end; after a timeout they are never
// released, since the engine's thread may still write to them. GPU tensors come as device addresses
// (start_device); their owner keeps them alive, by the same rule.
// The methods that take host buffers stay in this file with the type: they
// share the buffer-view bookkeeping (what a queued or timed-out exchange
// keeps alive). The GPU methods, which hold no views, are in
// module_device.cc.
#include "module.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "ring.h"

namespace {

using scalecom_ring::check_knobs;
using scalecom_ring::Engine_cuda_aware;
using scalecom_ring::Engine_device_scratch_bytes;
using scalecom_ring::Engine_start_device;
using scalecom_ring::Engine_use_device_kernels;
using scalecom_ring::EngineObject;

// Releases the views taken since `mark` (0: all of them).
void release_views(EngineObject* self, size_t mark = 0) {
  for (size_t i = mark; i < self->views->size(); ++i) PyBuffer_Release(&(*self->views)[i]);
  self->views->resize(mark);
}

PyObject* Engine_new(PyTypeObject* type, PyObject*, PyObject*) {
  EngineObject* self = reinterpret_cast<EngineObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->engine = nullptr;
  self->views = new std::vector<Py_buffer>();
  self->leaked = false;
  return reinterpret_cast<PyObject*>(self);
}

int Engine_init(EngineObject* self, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "", const_cast<char**>(kwlist))) return -1;
  try {
    self->engine = new scalecom::RingEngine();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return -1;
  }
  return 0;
}

void Engine_dealloc(EngineObject* self) {
  if (!self->leaked) {
    release_views(self);
    delete self->views;
  }
  delete self->engine;  // detaches a stuck thread instead of joining it
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

bool get_f32(EngineObject* self, PyObject* obj, bool writable, const char* what, float** data,
             int64_t* numel) {
  Py_buffer view;
  int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
  if (PyObject_GetBuffer(obj, &view, flags) != 0) {
    PyErr_Format(PyExc_TypeError, "ring allreduce: %s must be a C-contiguous%s float32 buffer",
                 what, writable ? " writable" : "");
    return false;
  }
  self->views->push_back(view);
  if (view.itemsize != 4 || view.format == nullptr || std::string(view.format) != "f") {
    PyErr_Format(PyExc_TypeError, "ring allreduce: %s must hold float32, got format '%s'", what,
                 view.format ? view.format : "?");
    return false;
  }
  *data = static_cast<float*>(view.buf);
  *numel = view.len / 4;
  return true;
}

// Tensor i of a start() call: its views (taken into self->views, which the
// caller releases on failure) and its step. False with a Python error set.
bool host_tensor(EngineObject* self, PyObject* memories, PyObject* grads, PyObject* outs,
                 PyObject* steps, Py_ssize_t i, scalecom::RingTensor* t) {
  float* grad = nullptr;
  int64_t n_mem = 0, n_grad = 0, n_out = 0;
  // The output may be the gradient itself (then both views are writable).
  PyObject* out = PyList_GET_ITEM(outs, i);
  const bool in_place = out == PyList_GET_ITEM(grads, i);
  if (!get_f32(self, PyList_GET_ITEM(memories, i), true, "memory", &t->memory, &n_mem) ||
      !get_f32(self, PyList_GET_ITEM(grads, i), in_place, "grad", &grad, &n_grad) ||
      !get_f32(self, out, true, "out", &t->out, &n_out))
    return false;
  if (n_mem != n_grad || n_mem != n_out) {
    PyErr_Format(PyExc_ValueError, "ring allreduce: tensor %zd has %lld memory, %lld grad and "
                 "%lld out elements", i, (long long)n_mem, (long long)n_grad,
                 (long long)n_out);
    return false;
  }
  t->grad = grad;
  t->numel = n_mem;
  t->step = PyLong_AsLongLong(PyList_GET_ITEM(steps, i));
  return !PyErr_Occurred();
}

PyObject* Engine_start(EngineObject* self, PyObject* args) {
  PyObject *memories, *grads, *outs, *steps;
  double ratio, beta;
  int threads;
  if (!PyArg_ParseTuple(args, "O!O!O!O!ddi", &PyList_Type, &memories, &PyList_Type, &grads,
                        &PyList_Type, &outs, &PyList_Type, &steps, &ratio, &beta, &threads))
    return nullptr;
  const Py_ssize_t count = PyList_GET_SIZE(memories);
  if (PyList_GET_SIZE(grads) != count || PyList_GET_SIZE(outs) != count ||
      PyList_GET_SIZE(steps) != count) {
    PyErr_SetString(PyExc_ValueError, "ring allreduce: memories, grads, outs and steps must "
                                      "have one entry per tensor");
    return nullptr;
  }
  if (!check_knobs(ratio, beta)) return nullptr;
  // The views of exchanges queued before this one stay held.
  const size_t mark = self->views->size();
  std::vector<scalecom::RingTensor> tensors;
  for (Py_ssize_t i = 0; i < count; ++i) {
    scalecom::RingTensor t{};
    if (!host_tensor(self, memories, grads, outs, steps, i, &t)) {
      release_views(self, mark);
      return nullptr;
    }
    tensors.push_back(t);
  }
  try {
    self->engine->start(std::move(tensors), ratio, static_cast<float>(beta), threads);
  } catch (const std::exception& e) {
    release_views(self, mark);
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* Engine_wait(EngineObject* self, PyObject* args) {
  double timeout;
  if (!PyArg_ParseTuple(args, "d", &timeout)) return nullptr;
  bool done = false;
  std::string error;
  Py_BEGIN_ALLOW_THREADS
  try {
    done = self->engine->wait(timeout);
  } catch (const std::exception& e) {
    done = true;
    error = e.what();
  }
  Py_END_ALLOW_THREADS
  if (!done) {
    self->leaked = true;  // the stuck thread may still write into these buffers
    // PyErr_Format has no %f.
    const std::string message = "ring allreduce: rank " + std::to_string(self->engine->rank()) +
                                " waited " + std::to_string(static_cast<int>(timeout)) +
                                " s for the exchange; a peer rank has stopped or is not "
                                "exchanging the same step";
    PyErr_SetString(PyExc_TimeoutError, message.c_str());
    return nullptr;
  }
  release_views(self);
  if (!error.empty()) {
    PyErr_SetString(PyExc_RuntimeError, error.c_str());
    return nullptr;
  }
  return PyLong_FromLongLong(self->engine->last_bytes());
}

PyObject* Engine_rank(EngineObject* self, PyObject*) { return PyLong_FromLong(self->engine->rank()); }
PyObject* Engine_nonfinite(EngineObject* self, PyObject*) {
  return PyLong_FromLongLong(self->engine->last_nonfinite());
}
PyObject* Engine_size(EngineObject* self, PyObject*) { return PyLong_FromLong(self->engine->size()); }
PyObject* Engine_compute(EngineObject* self, PyObject*) {
  return PyFloat_FromDouble(self->engine->last_compute_s());
}

PyObject* Engine_timings(EngineObject* self, PyObject*) {
  const scalecom::RingEngine::Timings& t = self->engine->last_timings();
  return Py_BuildValue("{s:d,s:d,s:d,s:d,s:d,s:d,s:d,s:d,s:d,s:i}", "agree_s", t.agree,
                       "select_s", t.select, "mpi_reduce_scatter_s", t.mpi_rs, "reduce_s",
                       t.reduce, "mpi_allgather_s", t.mpi_ag, "pack_s", t.pack, "unpack_s",
                       t.unpack, "update_s", t.update, "busy_s", t.busy, "exchanges",
                       t.exchanges);
}

// share(indices, leader, tag, timeout_s) -> bool: the Horovod path's index share (share.cc).
PyObject* Engine_share(EngineObject* self, PyObject* args) {
  PyObject* obj;
  int leader, tag;
  double timeout;
  if (!PyArg_ParseTuple(args, "Oiid", &obj, &leader, &tag, &timeout)) return nullptr;
  Py_buffer view;
  if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) != 0)
    return nullptr;
  const std::string format = view.format ? view.format : "?";
  if (view.itemsize != 4 || (format != "i" && format != "l" && format != "=i")) {
    PyBuffer_Release(&view);
    PyErr_Format(PyExc_TypeError, "index share: indices must be a writable C-contiguous int32 "
                 "buffer, got format '%s'", format.c_str());
    return nullptr;
  }
  bool done = false;
  std::string error;
  Py_BEGIN_ALLOW_THREADS
  try {
    done = self->engine->share(static_cast<int32_t*>(view.buf), view.len / 4, leader, tag,
                               timeout);
  } catch (const std::exception& e) {
    done = true;
    error = e.what();
  }
  Py_END_ALLOW_THREADS
  if (!done) return PyBool_FromLong(0);   // the receive stays posted: the view stays held
  PyBuffer_Release(&view);
  if (!error.empty()) {
    PyErr_SetString(PyExc_RuntimeError, error.c_str());
    return nullptr;
  }
  Py_RETURN_TRUE;
}

PyObject* Engine_max_tag(EngineObject* self, PyObject*) {
  return PyLong_FromLong(self->engine->max_tag());
}

PyObject* Engine_close(EngineObject* self, PyObject* args) {
  double timeout;
  if (!PyArg_ParseTuple(args, "d", &timeout)) return nullptr;
  if (self->leaked) Py_RETURN_FALSE;   // an exchange timed out: nothing more to wait for
  bool closed = false;
  std::string error;
  Py_BEGIN_ALLOW_THREADS
  try {
    closed = self->engine->close(timeout);
  } catch (const std::exception& e) {
    error = e.what();
  }
  Py_END_ALLOW_THREADS
  if (!error.empty()) {
    PyErr_SetString(PyExc_RuntimeError, error.c_str());
    return nullptr;
  }
  if (!closed) self->leaked = true;
  else release_views(self);
  return PyBool_FromLong(closed);
}

PyMethodDef Engine_methods[] = {
    {"start", reinterpret_cast<PyCFunction>(Engine_start), METH_VARARGS,
     "start(memories, grads, outs, steps, ratio, beta, threads): queue one fused exchange"},
    {"use_device_kernels", reinterpret_cast<PyCFunction>(Engine_use_device_kernels),
     METH_VARARGS, "use_device_kernels(addresses, transport): the CUDA kernels for GPU tensors"},
    {"cuda_aware", reinterpret_cast<PyCFunction>(Engine_cuda_aware), METH_NOARGS,
     "whether MPI is handed device buffers (else they are staged through pinned host memory)"},
    {"device_scratch_bytes", reinterpret_cast<PyCFunction>(Engine_device_scratch_bytes),
     METH_VARARGS, "device_scratch_bytes(numel, ratio) -> bytes of GPU scratch per tensor"},
    {"start_device", reinterpret_cast<PyCFunction>(Engine_start_device), METH_VARARGS,
     "start_device(specs, ratio, beta): queue one fused exchange of GPU tensors"},
    {"wait", reinterpret_cast<PyCFunction>(Engine_wait), METH_VARARGS,
     "wait(timeout_s) -> bytes sent by every exchange started so far; TimeoutError if they "
     "did not finish"},
    {"share", reinterpret_cast<PyCFunction>(Engine_share), METH_VARARGS,
     "share(indices, leader, tag, timeout_s) -> False on timeout: the leader sends its int32 "
     "indices to every rank, the others receive them (matched by tag)"},
    {"max_tag", reinterpret_cast<PyCFunction>(Engine_max_tag), METH_NOARGS,
     "the largest MPI tag, the bound on share()'s tag"},
    {"close", reinterpret_cast<PyCFunction>(Engine_close), METH_VARARGS,
     "close(timeout_s) -> True once every rank has closed (before MPI is finalized)"},
    {"last_timings", reinterpret_cast<PyCFunction>(Engine_timings), METH_NOARGS,
     "seconds per phase of the exchanges the last wait() finished, summed"},
    {"rank", reinterpret_cast<PyCFunction>(Engine_rank), METH_NOARGS, "rank in the ring"},
    {"size", reinterpret_cast<PyCFunction>(Engine_size), METH_NOARGS, "ranks in the ring"},
    {"last_nonfinite", reinterpret_cast<PyCFunction>(Engine_nonfinite), METH_NOARGS,
     "memory entries that refused a non-finite update in the last exchange"},
    {"last_compute_s", reinterpret_cast<PyCFunction>(Engine_compute), METH_NOARGS,
     "seconds the last wait()'s exchanges spent selecting, writing the output and updating "
     "the memory"},
    {nullptr, nullptr, 0, nullptr}};

PyTypeObject EngineType = {PyVarObject_HEAD_INIT(nullptr, 0)};

// Whether an Engine can be built here: MPI initialized (by Horovod), not
// finalized, at MPI_THREAD_MULTIPLE. Same answer on every rank of a job.
PyObject* mpi_ready(PyObject*, PyObject*) {
  int initialized = 0, finalized = 0, level = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Query_thread(&level);
  return PyBool_FromLong(initialized && !finalized && level >= MPI_THREAD_MULTIPLE);
}

PyMethodDef module_methods[] = {
    {"mpi_ready", mpi_ready, METH_NOARGS,
     "whether MPI is initialized at MPI_THREAD_MULTIPLE (an Engine can be built)"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_ring",
                          "ScaleCom's compressed ring allreduce over MPI (the ScaleCom ring).", -1,
                          module_methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__ring(void) {
  EngineType.tp_name = "horovod_scalecom._ring.Engine";
  EngineType.tp_basicsize = sizeof(EngineObject);
  EngineType.tp_flags = Py_TPFLAGS_DEFAULT;
  EngineType.tp_doc = "Compressed ring allreduce on a duplicate of MPI_COMM_WORLD.";
  EngineType.tp_new = Engine_new;
  EngineType.tp_init = reinterpret_cast<initproc>(Engine_init);
  EngineType.tp_dealloc = reinterpret_cast<destructor>(Engine_dealloc);
  EngineType.tp_methods = Engine_methods;
  if (PyType_Ready(&EngineType) < 0) return nullptr;
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  Py_INCREF(&EngineType);
  if (PyModule_AddObject(module, "Engine", reinterpret_cast<PyObject*>(&EngineType)) < 0) {
    Py_DECREF(&EngineType);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
