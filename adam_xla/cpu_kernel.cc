// One-pass dense Adam update of float32 tensors, registered as an XLA:CPU custom call target.
//
// XLA:CPU compiles the update into three loops per tensor (m, v, then the variable from the
// new m and v), which moves 40 bytes per parameter; this loop reads param, grad, m and v and
// writes param, m and v once: 28 bytes. adam_xla/cpu_kernel.py compiles this file on first use
// and calls it once for all the tensors of one device's update, from inside the update's XLA
// program, with the outputs aliased to the inputs, so the update stays in place. The m and v
// of many small variables may be ranges of two shared buffers (adam_xla/slots.py), which the
// kernel reads by offset. The work is shared, in chunks, between the calling thread and one
// helper thread: one core alone does not reach the machine's memory bandwidth.
//
// A second target does the dense-mode update of a table with a sparse (row) gradient,
// update_rule.adam_step_at_rows: every row moves, the gradient's rows with their gradient and
// the others with a zero one, in the same one pass (24 bytes per parameter plus the rows).
//
// The arithmetic is update_rule.adam_step's, operation for operation, in float32 and without
// fused multiply-adds (built with -ffp-contract=off): the results are XLA's to within float32
// roundings (XLA may fuse or order a multiply-add differently; see tests/cpu_kernel_test.py).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace xla {
// The registry's two public functions used here, as TensorFlow's libraries export them
// (xla/service/custom_call_target_registry.h).
class CustomCallTargetRegistry {
 public:
  static CustomCallTargetRegistry* Global();
  void Register(const std::string& symbol, void* address, const std::string& platform);
};
}  // namespace xla

struct XlaCustomCallStatus_;

// Each iteration reads element i of the inputs before writing element i of the outputs, and
// the outputs are the inputs' buffers (aliased) or disjoint from them: the iterations are
// independent. Said so, the compiler vectorizes without the runtime overlap check that would
// send the aliased (normal) case down its scalar loop.
#if defined(__clang__)
#define PARALLEL_SAFE_LOOP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define PARALLEL_SAFE_LOOP _Pragma("GCC ivdep")
#else
#define PARALLEL_SAFE_LOOP
#endif

namespace {

struct Coefficients {
  float lr_t, beta_1, beta_2, epsilon, decay;
  bool apply;
};

struct Tensor {
  float* param_out;
  float* m_out;
  float* v_out;
  const float* param;
  const float* grad;  // nullptr: a zero gradient (rows a sparse gradient does not touch)
  const float* m;
  const float* v;
  long size;
  bool decays;  // decoupled weight decay applies to this tensor
};

// The update loop, one instance per case so that each is a plain vectorizable loop:
// kGrad false is adam_step_at_rows' untouched rows (a zero gradient: no added term), kDecay
// adds decoupled weight decay.
template <bool kGrad, bool kDecay>
void UpdateLoop(const Tensor& t, const Coefficients& c, long begin, long end) {
  float* param_out = t.param_out;
  float* m_out = t.m_out;
  float* v_out = t.v_out;
  const float* param = t.param;
  const float* grad = t.grad;
  const float* m = t.m;
  const float* v = t.v;
  const float lr_t = c.lr_t, beta_1 = c.beta_1, beta_2 = c.beta_2, epsilon = c.epsilon;
  const float one_minus_beta_1 = 1.0f - beta_1, one_minus_beta_2 = 1.0f - beta_2;
  const float decay = c.decay;
  PARALLEL_SAFE_LOOP
  for (long i = begin; i < end; ++i) {
    float new_m = beta_1 * m[i];
    float new_v = beta_2 * v[i];
    if constexpr (kGrad) {
      const float g = grad[i];
      new_m = new_m + one_minus_beta_1 * g;
      new_v = new_v + one_minus_beta_2 * (g * g);
    }
    float p = param[i];
    if constexpr (kDecay) p = p - decay * p;
    param_out[i] = p - lr_t * new_m / (std::sqrt(new_v) + epsilon);
    m_out[i] = new_m;
    v_out[i] = new_v;
  }
}

// Elements [begin, end) of one tensor.
void UpdateRange(const Tensor& t, const Coefficients& c, long begin, long end) {
  if (!c.apply) {  // apply_if was false: the outputs are the inputs
    if (t.param_out == t.param && t.m_out == t.m && t.v_out == t.v) return;  // aliased, as called
    PARALLEL_SAFE_LOOP
    for (long i = begin; i < end; ++i) {
      t.param_out[i] = t.param[i];
      t.m_out[i] = t.m[i];
      t.v_out[i] = t.v[i];
    }
    return;
  }
  if (t.grad != nullptr) {
    (t.decays ? UpdateLoop<true, true> : UpdateLoop<true, false>)(t, c, begin, end);
  } else {
    (t.decays ? UpdateLoop<false, true> : UpdateLoop<false, false>)(t, c, begin, end);
  }
}

// The tensors laid end to end: tensor i is elements [starts[i], starts[i + 1]).
struct Work {
  const std::vector<Tensor>* tensors;
  std::vector<long> starts;
  Coefficients c;
};

// Elements [begin, end) of all the tensors laid end to end.
void UpdateSpan(const Work& work, long begin, long end) {
  const std::vector<long>& starts = work.starts;
  size_t i = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
  for (; i < work.tensors->size() && starts[i] < end; ++i) {
    const long lo = std::max(begin, starts[i]) - starts[i];
    const long hi = std::min(end, starts[i + 1]) - starts[i];
    if (lo < hi) UpdateRange((*work.tensors)[i], work.c, lo, hi);
  }
}

// Pieces the threads take in turn: small enough that a thread slowed by other work on its
// core leaves the rest to the other, large enough (256 KiB per array) to stream.
constexpr long kChunkElements = 1L << 16;

// Takes chunks from `next` until none are left.
void UpdateChunks(const Work& work, std::atomic<long>& next, long total) {
  for (long begin = next.fetch_add(kChunkElements, std::memory_order_relaxed); begin < total;
       begin = next.fetch_add(kChunkElements, std::memory_order_relaxed)) {
    UpdateSpan(work, begin, std::min(begin + kChunkElements, total));
  }
}

// One helper thread that shares large updates with the caller, chunk by chunk. It polls
// (yielding) for a while after each piece of work, as updates come step after step, then
// sleeps. If it is busy (two updates at once, e.g. two devices' programs), the caller does all
// the work itself.
class Helper {
 public:
  static Helper& Get() {
    static Helper* helper = new Helper();  // never destroyed: its thread may outlive statics
    return *helper;
  }

  void Run(const Work& work, long total) {
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
      UpdateSpan(work, 0, total);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      work_ = &work;
      total_ = total;
      next_.store(0, std::memory_order_relaxed);
      state_.store(kWork, std::memory_order_release);
    }
    cv_.notify_one();
    UpdateChunks(work, next_, total);
    // If the helper has not started (its core is busy elsewhere), nothing is left for it:
    // take the work back rather than wait for it to be scheduled.
    int state = kWork;
    if (!state_.compare_exchange_strong(state, kIdle, std::memory_order_acq_rel)) {
      while (state_.load(std::memory_order_acquire) != kDone) {
        std::this_thread::yield();  // other threads (TensorFlow's) may need this core meanwhile
      }
      state_.store(kIdle, std::memory_order_relaxed);
    }
    busy_.store(false, std::memory_order_release);
  }

 private:
  enum { kIdle = 0, kWork = 1, kRunning = 2, kDone = 3 };

  Helper() : thread_([this] { Loop(); }) { thread_.detach(); }

  void Loop() {
    for (;;) {
      for (int spin = 0; spin < 20000 && state_.load(std::memory_order_acquire) != kWork;
           ++spin) {
        std::this_thread::yield();
      }
      if (state_.load(std::memory_order_acquire) != kWork) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return state_.load(std::memory_order_acquire) == kWork; });
      }
      int state = kWork;  // the caller may have taken the work back meanwhile
      if (!state_.compare_exchange_strong(state, kRunning, std::memory_order_acq_rel)) continue;
      UpdateChunks(*work_, next_, total_);
      state_.store(kDone, std::memory_order_release);
    }
  }

  std::atomic<bool> busy_{false};
  std::atomic<int> state_{kIdle};
  std::atomic<long> next_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  const Work* work_ = nullptr;
  long total_ = 0;
  std::thread thread_;
};

// Below this many elements in all, a second thread costs more than it saves.
constexpr long kSplitElements = 1L << 18;

// All the tensors' elements, on two threads when there are enough of them.
void Update(const std::vector<Tensor>& tensors, const Coefficients& c, long total) {
  Work work{&tensors, {0}, c};
  work.starts.reserve(tensors.size() + 1);
  for (const Tensor& t : tensors) work.starts.push_back(work.starts.back() + t.size);
  if (total >= kSplitElements) {
    Helper::Get().Run(work, total);
  } else {
    UpdateSpan(work, 0, total);
  }
}

// Operands: param and grad of each tensor i (2i, 2i+1), then K state buffers (2n .. 2n+K-1),
// then the coefficients {lr_t, beta_1, beta_2, epsilon, decay, apply}; results: the tuple of
// the n params, then the K state buffers. `opaque` lists "size:decays:m:v:offset:start" per
// tensor, comma-separated: elements [start, start + size) of param and grad i are updated (the
// whole tensor with start 0; one replica's share of it with sharded state), and their m and v
// are elements [offset, offset + size) of state buffers m and v (a variable's own m and v with
// offset 0, or a range of buffers shared by several). The param's other elements are kept.
void AdamUpdateF32(void* out, const void** in, const char* opaque, size_t opaque_len,
                   XlaCustomCallStatus_* /*status*/) {
  const std::string spec(opaque, opaque_len);
  struct Layout {
    long size, m, v, offset, start;
    bool decays;
  };
  std::vector<Layout> layouts;
  long buffers = 0;
  for (const char* cursor = spec.c_str(); *cursor != '\0';) {
    char* next = nullptr;
    Layout layout{};
    layout.size = std::strtol(cursor, &next, 10);
    layout.decays = std::strtol(next + 1, &next, 10) != 0;
    layout.m = std::strtol(next + 1, &next, 10);
    layout.v = std::strtol(next + 1, &next, 10);
    layout.offset = std::strtol(next + 1, &next, 10);
    layout.start = std::strtol(next + 1, &next, 10);
    buffers = std::max(buffers, std::max(layout.m, layout.v) + 1);
    layouts.push_back(layout);
    cursor = *next == ',' ? next + 1 : next;
  }
  const long n = static_cast<long>(layouts.size());
  void** outs = static_cast<void**>(out);
  std::vector<Tensor> tensors;
  tensors.reserve(n);
  long total = 0;
  for (long i = 0; i < n; ++i) {
    const Layout& l = layouts[i];
    tensors.push_back({static_cast<float*>(outs[i]) + l.start,
                       static_cast<float*>(outs[n + l.m]) + l.offset,
                       static_cast<float*>(outs[n + l.v]) + l.offset,
                       static_cast<const float*>(in[2 * i]) + l.start,
                       static_cast<const float*>(in[2 * i + 1]) + l.start,
                       static_cast<const float*>(in[2 * n + l.m]) + l.offset,
                       static_cast<const float*>(in[2 * n + l.v]) + l.offset, l.size, l.decays});
    total += l.size;
  }
  const float* c = static_cast<const float*>(in[2 * n + buffers]);
  Update(tensors, Coefficients{c[0], c[1], c[2], c[3], c[4], c[5] != 0.0f}, total);
}

// Operands: param, m, v of a table of `rows` rows of `width` floats, the gradient's row
// indices (int64, n of them) and its rows (n x width), then the coefficients as above;
// results: param, m, v. `opaque` is "rows:width:n:decays". Each index should appear once,
// except entries whose gradient is zero (sparse.sum_duplicates' padding); entries of one index
// are summed all the same. Indices outside [0, rows) are skipped, as XLA's scatter drops them.
void AdamRowsF32(void* out, const void** in, const char* opaque, size_t opaque_len,
                 XlaCustomCallStatus_* /*status*/) {
  const std::string spec(opaque, opaque_len);
  char* next = nullptr;
  const long rows = std::strtol(spec.c_str(), &next, 10);
  const long width = std::strtol(next + 1, &next, 10);
  const long n = std::strtol(next + 1, &next, 10);
  const bool decays = next[0] == ':' && next[1] == '1';
  void** outs = static_cast<void**>(out);
  float* param_out = static_cast<float*>(outs[0]);
  float* m_out = static_cast<float*>(outs[1]);
  float* v_out = static_cast<float*>(outs[2]);
  const float* param = static_cast<const float*>(in[0]);
  const float* m = static_cast<const float*>(in[1]);
  const float* v = static_cast<const float*>(in[2]);
  const int64_t* indices = static_cast<const int64_t*>(in[3]);
  const float* row_grads = static_cast<const float*>(in[4]);
  const float* c = static_cast<const float*>(in[5]);
  const Coefficients coefficients{c[0], c[1], c[2], c[3], c[4], c[5] != 0.0f};

  std::vector<std::pair<int64_t, long>> entries;  // (row, entry), in range, by row then entry
  entries.reserve(n);
  for (long e = 0; e < n; ++e) {
    if (indices[e] >= 0 && indices[e] < rows) entries.emplace_back(indices[e], e);
  }
  std::sort(entries.begin(), entries.end());
  // The summed gradient of rows given more than once. Reserved for the most there can be, so
  // that growing it never moves the rows the pieces below point to.
  std::vector<float> sums;
  sums.reserve(entries.size() * width);

  // The table as consecutive pieces: runs of untouched rows (zero gradient) and touched rows.
  std::vector<Tensor> pieces;
  auto piece = [&](long first_row, long row_count, const float* grad) {
    const long at = first_row * width;
    pieces.push_back({param_out + at, m_out + at, v_out + at, param + at, grad, m + at, v + at,
                      row_count * width, decays});
  };
  long next_row = 0;
  for (size_t a = 0, b = 0; a < entries.size(); a = b) {
    const long row = entries[a].first;
    const float* grad = row_grads + entries[a].second * width;
    for (b = a + 1; b < entries.size() && entries[b].first == row; ++b) {
    }
    if (b - a > 1) {
      sums.resize(sums.size() + width);
      float* sum = sums.data() + sums.size() - width;
      for (long j = 0; j < width; ++j) sum[j] = grad[j];
      for (size_t e = a + 1; e < b; ++e) {
        const float* more = row_grads + entries[e].second * width;
        for (long j = 0; j < width; ++j) sum[j] += more[j];
      }
      grad = sum;
    }
    if (row > next_row) piece(next_row, row - next_row, nullptr);
    piece(row, 1, grad);
    next_row = row + 1;
  }
  if (rows > next_row) piece(next_row, rows - next_row, nullptr);
  Update(pieces, coefficients, rows * width);
}

// Operands: K destination buffers, then source buffers; results: the K destinations, each
// updated in place (every destination receives at least one copy). `opaque` lists "destination:start:source:size" per copy, comma-separated:
// elements [0, size) of the source go to elements [start, start + size) of the destination.
// Sharded state's exchange (sharding.py): a memcpy where XLA's loops for the same slices ran
// several times slower.
void CopyRangesF32(void* out, const void** in, const char* opaque, size_t opaque_len,
                   XlaCustomCallStatus_* /*status*/) {
  const std::string spec(opaque, opaque_len);
  struct Copy {
    long destination, start, source, size;
  };
  std::vector<Copy> copies;
  long destinations = 0;
  for (const char* cursor = spec.c_str(); *cursor != '\0';) {
    char* next = nullptr;
    Copy copy{};
    copy.destination = std::strtol(cursor, &next, 10);
    copy.start = std::strtol(next + 1, &next, 10);
    copy.source = std::strtol(next + 1, &next, 10);
    copy.size = std::strtol(next + 1, &next, 10);
    destinations = std::max(destinations, copy.destination + 1);
    copies.push_back(copy);
    cursor = *next == ',' ? next + 1 : next;
  }
  // One result is the buffer itself, several a tuple of buffers.
  auto destination = [&](long d) {
    return static_cast<float*>(destinations == 1 ? out : static_cast<void**>(out)[d]);
  };
  for (const Copy& copy : copies) {
    std::memcpy(destination(copy.destination) + copy.start, in[destinations + copy.source],
                copy.size * sizeof(float));
  }
}

struct Registration {
  Registration() {
    xla::CustomCallTargetRegistry::Global()->Register(
        "adam_xla_adam_update_f32", reinterpret_cast<void*>(&AdamUpdateF32), "Host");
    xla::CustomCallTargetRegistry::Global()->Register(
        "adam_xla_adam_rows_f32", reinterpret_cast<void*>(&AdamRowsF32), "Host");
    xla::CustomCallTargetRegistry::Global()->Register(
        "adam_xla_copy_ranges_f32", reinterpret_cast<void*>(&CopyRangesF32), "Host");
  }
} registration;

}  // namespace
