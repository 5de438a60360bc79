// One-pass dense Adam update of float32 tensors, registered as an XLA:CPU custom call target.
//
// XLA:CPU compiles the update into three loops per tensor (m, v, then the variable from the
// new m and v), which moves 40 bytes per parameter; this loop reads param, grad, m and v and
// writes param, m and v once: 28 bytes. adam_xla/cpu_kernel.py compiles this file on first use
// and calls it once for all the tensors of one device's update, from inside the update's XLA
// program, with the outputs aliased to the inputs, so the update stays in place. The work is
// split between the calling thread and one helper thread: one core alone does not reach the
// machine's memory bandwidth.
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

// Elements [begin, end) of all the tensors laid end to end.
void UpdateSpan(const std::vector<Tensor>& tensors, const Coefficients& c, long begin, long end) {
  long offset = 0;
  for (const Tensor& t : tensors) {
    const long lo = begin > offset ? begin - offset : 0;
    const long hi = end - offset < t.size ? end - offset : t.size;
    if (lo < hi) UpdateRange(t, c, lo, hi);
    offset += t.size;
    if (offset >= end) break;
  }
}

// One helper thread that takes the second half of large updates. It polls (yielding) for a
// while after each piece of work, as updates come step after step, then sleeps. If it is busy
// (two updates at once, e.g. two devices' programs), the caller does all the work itself.
class Helper {
 public:
  static Helper& Get() {
    static Helper* helper = new Helper();  // never destroyed: its thread may outlive statics
    return *helper;
  }

  void Run(const std::vector<Tensor>& tensors, const Coefficients& c, long total) {
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
      UpdateSpan(tensors, c, 0, total);
      return;
    }
    const long half = (total / 2) & ~15L;  // a multiple of 16 floats: whole vectors
    {
      std::lock_guard<std::mutex> lock(mu_);
      tensors_ = &tensors;
      coefficients_ = c;
      begin_ = half;
      end_ = total;
      state_.store(kWork, std::memory_order_release);
    }
    cv_.notify_one();
    UpdateSpan(tensors, c, 0, half);
    while (state_.load(std::memory_order_acquire) != kDone) {
      std::this_thread::yield();  // other threads (TensorFlow's) may need this core meanwhile
    }
    state_.store(kIdle, std::memory_order_relaxed);
    busy_.store(false, std::memory_order_release);
  }

 private:
  enum { kIdle = 0, kWork = 1, kDone = 2 };

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
      UpdateSpan(*tensors_, coefficients_, begin_, end_);
      state_.store(kDone, std::memory_order_release);
    }
  }

  std::atomic<bool> busy_{false};
  std::atomic<int> state_{kIdle};
  std::mutex mu_;
  std::condition_variable cv_;
  const std::vector<Tensor>* tensors_ = nullptr;
  Coefficients coefficients_{};
  long begin_ = 0, end_ = 0;
  std::thread thread_;
};

// Below this many elements in all, a second thread costs more than it saves.
constexpr long kSplitElements = 1L << 18;

// All the tensors' elements, on two threads when there are enough of them.
void Update(const std::vector<Tensor>& tensors, const Coefficients& c, long total) {
  if (total >= kSplitElements) {
    Helper::Get().Run(tensors, c, total);
  } else {
    UpdateSpan(tensors, c, 0, total);
  }
}

// Operands: for each tensor i param, grad, m, v (4i .. 4i+3), then the coefficients
// {lr_t, beta_1, beta_2, epsilon, decay, apply}; results: the tuple of param, m, v of each
// tensor (3i .. 3i+2). `opaque` lists "size:decays" per tensor, comma-separated.
void AdamUpdateF32(void* out, const void** in, const char* opaque, size_t opaque_len,
                   XlaCustomCallStatus_* /*status*/) {
  const std::string spec(opaque, opaque_len);
  std::vector<Tensor> tensors;
  void** outs = static_cast<void**>(out);
  long total = 0;
  const char* cursor = spec.c_str();
  while (*cursor != '\0') {
    char* next = nullptr;
    const long size = std::strtol(cursor, &next, 10);
    const bool decays = next[0] == ':' && next[1] == '1';
    const size_t i = tensors.size();
    tensors.push_back({static_cast<float*>(outs[3 * i]), static_cast<float*>(outs[3 * i + 1]),
                       static_cast<float*>(outs[3 * i + 2]),
                       static_cast<const float*>(in[4 * i]),
                       static_cast<const float*>(in[4 * i + 1]),
                       static_cast<const float*>(in[4 * i + 2]),
                       static_cast<const float*>(in[4 * i + 3]), size, decays});
    total += size;
    cursor = next + 2;
    if (*cursor == ',') ++cursor;
  }
  const float* c = static_cast<const float*>(in[4 * tensors.size()]);
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

struct Registration {
  Registration() {
    xla::CustomCallTargetRegistry::Global()->Register(
        "adam_xla_adam_update_f32", reinterpret_cast<void*>(&AdamUpdateF32), "Host");
    xla::CustomCallTargetRegistry::Global()->Register(
        "adam_xla_adam_rows_f32", reinterpret_cast<void*>(&AdamRowsF32), "Host");
  }
} registration;

}  // namespace
