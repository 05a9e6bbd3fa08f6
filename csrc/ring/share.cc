// The Horovod path's index share over the engine's communicator: the leader sends its
// k indices to every other rank, tagged with the tensor's registration index,
// so a rank receives the indices of the tensor it is at, whatever order the
// others reach their tensors in (Horovod, too, matches tensors by name).
// Messages from one leader with one tag arrive in the order they were sent,
// so successive steps of a tensor cannot be confused.
//
// No Horovod negotiation cycle: one message latency per tensor instead of a
// round of Horovod's coordinator. The leader's sends are non-blocking, their
// data copied, and completed by later calls (or close()), so a leader never
// waits on a peer that is still busy elsewhere.
#include <algorithm>
#include <chrono>
#include <climits>
#include <stdexcept>
#include <string>
#include <thread>

#include "ring.h"

namespace scalecom {
namespace {

void check(int code, const char* what) { check_mpi(code, what, "index share"); }

}  // namespace

int RingEngine::max_tag() const {
  void* value = nullptr;
  int found = 0;
  MPI_Comm_get_attr(comm_, MPI_TAG_UB, &value, &found);
  return found ? *static_cast<int*>(value) : 32767;   // the least MPI guarantees
}

void RingEngine::progress_sends() {
  std::lock_guard<std::mutex> lock(share_mu_);
  while (!sends_.empty()) {
    int done = 0;
    check(MPI_Testall(static_cast<int>(sends_.front().requests.size()),
                      sends_.front().requests.data(), &done, MPI_STATUSES_IGNORE),
          "MPI_Testall");
    if (!done) break;   // completed in order is enough: the oldest bounds the memory
    sends_.pop_front();
  }
}

bool RingEngine::share(int32_t* indices, int64_t k, int leader, int tag, double timeout_s) {
  if (leader < 0 || leader >= size_)
    throw std::invalid_argument("index share: leader " + std::to_string(leader) +
                                " outside [0, " + std::to_string(size_) + ")");
  if (tag < 0 || tag >= max_tag())
    throw std::invalid_argument("index share: tag " + std::to_string(tag) +
                                " not below MPI_TAG_UB (reserved for the exit barrier)");
  if (k > INT32_MAX) throw std::invalid_argument("index share: k above 2^31 - 1");
  progress_sends();
  if (rank_ == leader) {
    send_indices(indices, static_cast<int>(k), tag);
    return true;
  }
  return receive_indices(indices, static_cast<int>(k), leader, tag, timeout_s);
}

void RingEngine::send_indices(const int32_t* indices, int count, int tag) {
  PendingSend send;
  send.data.assign(indices, indices + count);
  send.requests.resize(size_ - 1);
  int at = 0;
  for (int peer = 0; peer < size_; ++peer) {
    if (peer == rank_) continue;
    check(MPI_Isend(send.data.data(), count, MPI_INT32_T, peer, tag, comm_,
                    &send.requests[at++]),
          "MPI_Isend");
  }
  std::lock_guard<std::mutex> lock(share_mu_);
  sends_.push_back(std::move(send));
}

bool RingEngine::receive_indices(int32_t* indices, int count, int leader, int tag,
                                 double timeout_s) {
  MPI_Request request;
  check(MPI_Irecv(indices, count, MPI_INT32_T, leader, tag, comm_, &request), "MPI_Irecv");
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  MPI_Status status;
  auto pause = std::chrono::microseconds(1);
  for (int done = 0; !done;) {
    check(MPI_Test(&request, &done, &status), "MPI_Test");
    if (done) break;
    if (std::chrono::steady_clock::now() > deadline) {
      // The receive stays posted into `indices`: the caller must never free it.
      std::lock_guard<std::mutex> lock(mu_);
      broken_ = true;
      return false;
    }
    // Spin briefly (a share normally lands within microseconds), then yield.
    if (pause.count() > 50) std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(100));
  }
  int got = 0;
  MPI_Get_count(&status, MPI_INT32_T, &got);
  if (got != count)
    throw std::runtime_error("index share: expected " + std::to_string(count) +
                             " indices from leader rank " + std::to_string(leader) + ", got " +
                             std::to_string(got) + "; the ranks disagree on the tensor");
  return true;
}

bool RingEngine::finish_sends(double timeout_s) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    progress_sends();
    {
      std::lock_guard<std::mutex> lock(share_mu_);
      if (sends_.empty()) return true;
    }
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

}  // namespace scalecom
