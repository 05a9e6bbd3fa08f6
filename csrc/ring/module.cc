// pybind11 binding of the ring engine: horovod_scalecom._ring.Engine. It takes
// any C-contiguous float32 buffers (numpy arrays; torch CPU tensors through
// .numpy()), so both frameworks share it. The buffers are held until wait()
// has seen every queued exchange end; after a timeout they are never
// released, since the engine's thread may still write to them. GPU tensors
// come as device addresses (start_device); their owner keeps them alive, by
// the same rule. The GIL is released while wait(), share() and close() block.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "buffers.h"
#include "ring.h"

namespace py = pybind11;

namespace {

// printf into a Python exception of `type`.
[[noreturn]] void raise(PyObject* type, const char* format, ...) {
  char text[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(text, sizeof text, format, args);
  va_end(args);
  PyErr_SetString(type, text);
  throw py::error_already_set();
}

// f(), with the engine's C++ exceptions raised as Error (RuntimeError unless
// named): pybind11 alone would raise std::invalid_argument as ValueError.
template <typename Error = std::runtime_error, typename F>
auto engine_call(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::exception& e) {
    throw Error(e.what());
  }
}

// ratio and beta, as both start functions take them.
void check_knobs(double ratio, double beta) {
  if (!((ratio > 0.0 && ratio <= 1.0) && (beta > 0.0 && beta <= 1.0)))
    raise(PyExc_ValueError, "ring allreduce: ratio and beta must lie in (0, 1], got %g and %g",
          ratio, beta);
}

// (memory, grad, grad_type, out, numel, step, device, scratch, scratch_bytes):
// one GPU tensor of start_device, as device addresses.
using DeviceSpec = std::tuple<uintptr_t, uintptr_t, int, uintptr_t, long long, long long, int,
                              uintptr_t, unsigned long long>;

class Engine {
 public:
  Engine() : engine_(engine_call([] { return std::make_unique<scalecom::RingEngine>(); })) {}
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  // Then engine_ goes, which detaches a stuck thread instead of joining it.
  ~Engine() {
    if (!leaked_) release_views();
  }

  // start(memories, grads, outs, steps, ratio, beta, threads): one fused exchange of host buffers.
  void start(py::list memories, py::list grads, py::list outs, py::list steps, double ratio,
             double beta, int threads) {
    const size_t count = memories.size();
    if (grads.size() != count || outs.size() != count || steps.size() != count)
      raise(PyExc_ValueError, "ring allreduce: memories, grads, outs and steps must have one "
            "entry per tensor");
    check_knobs(ratio, beta);
    // The views of exchanges queued before this one stay held.
    const size_t mark = views_.size();
    try {
      std::vector<scalecom::RingTensor> tensors(count);
      for (size_t i = 0; i < count; ++i)
        host_tensor(memories[i].ptr(), grads[i].ptr(), outs[i].ptr(), steps[i].ptr(), i,
                    &tensors[i]);
      engine_call([&] {
        engine_->start(std::move(tensors), ratio, static_cast<float>(beta), threads);
      });
    } catch (...) {
      release_views(mark);
      throw;
    }
  }

  // wait(timeout_s) -> bytes sent by every exchange started so far.
  int64_t wait(double timeout) {
    bool done = false;
    std::string error;
    {
      py::gil_scoped_release nogil;
      try {
        done = engine_->wait(timeout);
      } catch (const std::exception& e) {
        done = true;
        error = e.what();
      }
    }
    if (!done) {
      leaked_ = true;  // the stuck thread may still write into these buffers
      raise(PyExc_TimeoutError, "ring allreduce: rank %d waited %d s for the exchange; a peer "
            "rank has stopped or is not exchanging the same step", engine_->rank(),
            static_cast<int>(timeout));
    }
    release_views();
    if (!error.empty()) throw std::runtime_error(error);
    return engine_->last_bytes();
  }

  // share(indices, leader, tag, timeout_s) -> False on timeout: the Horovod path's index share
  // (share.cc).
  bool share(py::object indices, int leader, int tag, double timeout) {
    Py_buffer view;
    if (PyObject_GetBuffer(indices.ptr(), &view,
                           PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) != 0)
      throw py::error_already_set();
    const std::string format = view.format ? view.format : "?";
    if (view.itemsize != 4 || (format != "i" && format != "l" && format != "=i")) {
      PyBuffer_Release(&view);
      raise(PyExc_TypeError, "index share: indices must be a writable C-contiguous int32 "
            "buffer, got format '%s'", format.c_str());
    }
    bool done = false;
    std::string error;
    {
      py::gil_scoped_release nogil;
      try {
        done = engine_->share(static_cast<int32_t*>(view.buf), view.len / 4, leader, tag,
                              timeout);
      } catch (const std::exception& e) {
        done = true;
        error = e.what();
      }
    }
    if (!done) return false;  // the receive stays posted: the view stays held
    PyBuffer_Release(&view);
    if (!error.empty()) throw std::runtime_error(error);
    return true;
  }

  // close(timeout_s) -> True once every rank has closed.
  bool close(double timeout) {
    if (leaked_) return false;  // an exchange timed out: nothing more to wait for
    bool closed = false;
    {
      py::gil_scoped_release nogil;
      closed = engine_call([&] { return engine_->close(timeout); });
    }
    if (!closed) leaked_ = true;
    else release_views();
    return closed;
  }

  py::dict last_timings() const {
    const scalecom::RingEngine::Timings& t = engine_->last_timings();
    py::dict d;
    d["agree_s"] = t.agree;
    d["select_s"] = t.select;
    d["mpi_reduce_scatter_s"] = t.mpi_rs;
    d["reduce_s"] = t.reduce;
    d["mpi_allgather_s"] = t.mpi_ag;
    d["pack_s"] = t.pack;
    d["unpack_s"] = t.unpack;
    d["update_s"] = t.update;
    d["busy_s"] = t.busy;
    d["exchanges"] = t.exchanges;
    return d;
  }

  // --- GPU tensors: device addresses, whose owner keeps them alive (no views) ---

  // use_device_kernels({name: address}, transport): the C ABI of csrc/cuda as
  // function addresses by name (horovod_scalecom.cuda passes every function of
  // the library), and "auto", "staged" or "cuda-aware" (horovod_scalecom.ring).
  void use_device_kernels(py::dict table, const std::string& transport) {
    scalecom::DeviceTransport how;
    if (transport == "auto") how = scalecom::DeviceTransport::kAuto;
    else if (transport == "staged") how = scalecom::DeviceTransport::kStaged;
    else if (transport == "cuda-aware") how = scalecom::DeviceTransport::kCudaAware;
    else
      raise(PyExc_ValueError, "ring allreduce: transport %s: expected 'auto', 'staged' or "
            "'cuda-aware'", std::string(py::repr(py::str(transport))).c_str());
    scalecom::DeviceKernels k;
    scalecom::DeviceKernels::each(k, [&](const char* name, auto& fn) {
      PyObject* address = PyDict_GetItemString(table.ptr(), name);  // borrowed
      if (address == nullptr)
        raise(PyExc_ValueError, "ring allreduce: the CUDA kernel table has no '%s'", name);
      void* a = PyLong_AsVoidPtr(address);
      if (PyErr_Occurred()) throw py::error_already_set();
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(a);
    });
    engine_call<py::value_error>([&] { engine_->set_device_kernels(k, how); });
  }

  size_t device_scratch_bytes(long long numel, double ratio) const {
    if (numel < 0 || !(ratio > 0.0 && ratio <= 1.0))
      raise(PyExc_ValueError, "ring allreduce: numel >= 0 and ratio in (0, 1]");
    return engine_call([&] { return engine_->device_scratch_bytes(numel, ratio); });
  }

  // start_device([DeviceSpec, ...], ratio, beta): one fused exchange of GPU tensors.
  void start_device(const std::vector<DeviceSpec>& specs, double ratio, double beta) {
    check_knobs(ratio, beta);
    std::vector<scalecom::RingTensor> tensors;
    for (const DeviceSpec& s : specs) {
      scalecom::RingTensor t;
      t.memory = reinterpret_cast<float*>(std::get<0>(s));
      t.grad = reinterpret_cast<const void*>(std::get<1>(s));
      t.grad_type = std::get<2>(s);
      t.out = reinterpret_cast<float*>(std::get<3>(s));
      t.numel = std::get<4>(s);
      t.step = std::get<5>(s);
      t.device = std::get<6>(s);
      t.scratch = reinterpret_cast<void*>(std::get<7>(s));
      t.scratch_bytes = std::get<8>(s);
      if (t.device < 0 || t.numel < 0)
        raise(PyExc_ValueError, "ring allreduce: device and numel must be >= 0");
      tensors.push_back(t);
    }
    engine_call([&] { engine_->start(std::move(tensors), ratio, static_cast<float>(beta), 1); });
  }

  const scalecom::RingEngine& engine() const { return *engine_; }

 private:
  // Releases the views taken since `mark` (0: all of them).
  void release_views(size_t mark = 0) {
    for (size_t i = mark; i < views_.size(); ++i) PyBuffer_Release(&views_[i]);
    views_.resize(mark);
  }

  // A float32 view of obj, held in views_ (the caller releases it on failure).
  float* f32(py::handle obj, bool writable, const char* what, int64_t* numel) {
    Py_buffer view;
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj.ptr(), &view, flags) != 0)
      raise(PyExc_TypeError, "ring allreduce: %s must be a C-contiguous%s float32 buffer", what,
            writable ? " writable" : "");
    views_.push_back(view);
    if (view.itemsize != 4 || view.format == nullptr || std::string(view.format) != "f")
      raise(PyExc_TypeError, "ring allreduce: %s must hold float32, got format '%s'", what,
            view.format ? view.format : "?");
    *numel = view.len / 4;
    return static_cast<float*>(view.buf);
  }

  // Tensor i of a start() call.
  void host_tensor(py::handle memory, py::handle grad, py::handle out, py::handle step, size_t i,
                   scalecom::RingTensor* t) {
    int64_t n_mem = 0, n_grad = 0, n_out = 0;
    // The output may be the gradient itself (then both views are writable).
    const bool in_place = out.is(grad);
    t->memory = f32(memory, true, "memory", &n_mem);
    t->grad = f32(grad, in_place, "grad", &n_grad);
    t->out = f32(out, true, "out", &n_out);
    if (n_mem != n_grad || n_mem != n_out)
      raise(PyExc_ValueError, "ring allreduce: tensor %zu has %lld memory, %lld grad and %lld "
            "out elements", i, (long long)n_mem, (long long)n_grad, (long long)n_out);
    t->numel = n_mem;
    t->step = PyLong_AsLongLong(step.ptr());
    if (PyErr_Occurred()) throw py::error_already_set();
  }

  std::unique_ptr<scalecom::RingEngine> engine_;
  std::vector<Py_buffer> views_;
  bool leaked_ = false;  // an exchange timed out: views_ are never released
};

// Whether an Engine can be built here: MPI initialized (by Horovod), not
// finalized, at MPI_THREAD_MULTIPLE. Same answer on every rank of a job.
bool mpi_ready() {
  int initialized = 0, finalized = 0, level = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Query_thread(&level);
  return initialized && !finalized && level >= MPI_THREAD_MULTIPLE;
}

}  // namespace

PYBIND11_MODULE(_ring, m) {
  py::options options;
  options.disable_function_signatures();   // the docstrings say the calls, as before
  m.doc() = "ScaleCom's compressed ring allreduce over MPI (the ScaleCom ring).";
  m.def("mpi_ready", &mpi_ready,
        "whether MPI is initialized at MPI_THREAD_MULTIPLE (an Engine can be built)");
  py::class_<Engine>(m, "Engine", "Compressed ring allreduce on a duplicate of MPI_COMM_WORLD.")
      .def(py::init<>())
      .def("start", &Engine::start,
           "start(memories, grads, outs, steps, ratio, beta, threads): queue one fused exchange")
      .def("use_device_kernels", &Engine::use_device_kernels,
           "use_device_kernels(addresses, transport): the CUDA kernels for GPU tensors")
      .def("cuda_aware", [](const Engine& e) { return e.engine().cuda_aware(); },
           "whether MPI is handed device buffers (else they are staged through pinned host "
           "memory)")
      .def("device_scratch_bytes", &Engine::device_scratch_bytes,
           "device_scratch_bytes(numel, ratio) -> bytes of GPU scratch per tensor")
      .def("start_device", &Engine::start_device,
           "start_device(specs, ratio, beta): queue one fused exchange of GPU tensors")
      .def("wait", &Engine::wait,
           "wait(timeout_s) -> bytes sent by every exchange started so far; TimeoutError if "
           "they did not finish")
      .def("share", &Engine::share,
           "share(indices, leader, tag, timeout_s) -> False on timeout: the leader sends its "
           "int32 indices to every rank, the others receive them (matched by tag)")
      .def("max_tag", [](const Engine& e) { return e.engine().max_tag(); },
           "the largest MPI tag, the bound on share()'s tag")
      .def("close", &Engine::close,
           "close(timeout_s) -> True once every rank has closed (before MPI is finalized)")
      .def("last_timings", &Engine::last_timings,
           "seconds per phase of the exchanges the last wait() finished, summed")
      .def("rank", [](const Engine& e) { return e.engine().rank(); }, "rank in the ring")
      .def("size", [](const Engine& e) { return e.engine().size(); }, "ranks in the ring")
      .def("last_nonfinite", [](const Engine& e) { return e.engine().last_nonfinite(); },
           "memory entries that refused a non-finite update in the last exchange")
      .def("last_compute_s", [](const Engine& e) { return e.engine().last_compute_s(); },
           "seconds the last wait()'s exchanges spent selecting, writing the output and "
           "updating the memory");
}
