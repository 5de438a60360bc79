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
// The arithmetic is update_rule.adam_step's, operation for operation, in float32 and without
// fused multiply-adds (built with -ffp-contract=off): the results are XLA's to within float32
// roundings (XLA may fuse or order a multiply-add differently; see tests/cpu_kernel_test.py).

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
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
  const float* grad;
  const float* m;
  const float* v;
  long size;
  bool decays;  // decoupled weight decay applies to this tensor
};

// Elements [begin, end) of one tensor.
void UpdateRange(const Tensor& t, const Coefficients& c, long begin, long end) {
  float* param_out = t.param_out;
  float* m_out = t.m_out;
  float* v_out = t.v_out;
  const float* param = t.param;
  const float* grad = t.grad;
  const float* m = t.m;
  const float* v = t.v;
  const float lr_t = c.lr_t, beta_1 = c.beta_1, beta_2 = c.beta_2, epsilon = c.epsilon;
  const float one_minus_beta_1 = 1.0f - beta_1, one_minus_beta_2 = 1.0f - beta_2;
  if (!c.apply) {  // apply_if was false: the outputs are the inputs
    if (param_out == param && m_out == m && v_out == v) return;  // aliased, as called
    PARALLEL_SAFE_LOOP
    for (long i = begin; i < end; ++i) {
      param_out[i] = param[i];
      m_out[i] = m[i];
      v_out[i] = v[i];
    }
    return;
  }
  if (t.decays) {
    const float decay = c.decay;
    PARALLEL_SAFE_LOOP
    for (long i = begin; i < end; ++i) {
      const float g = grad[i];
      const float new_m = beta_1 * m[i] + one_minus_beta_1 * g;
      const float new_v = beta_2 * v[i] + one_minus_beta_2 * (g * g);
      const float p = param[i] - decay * param[i];
      param_out[i] = p - lr_t * new_m / (std::sqrt(new_v) + epsilon);
      m_out[i] = new_m;
      v_out[i] = new_v;
    }
    return;
  }
  PARALLEL_SAFE_LOOP
  for (long i = begin; i < end; ++i) {
    const float g = grad[i];
    const float new_m = beta_1 * m[i] + one_minus_beta_1 * g;
    const float new_v = beta_2 * v[i] + one_minus_beta_2 * (g * g);
    param_out[i] = param[i] - lr_t * new_m / (std::sqrt(new_v) + epsilon);
    m_out[i] = new_m;
    v_out[i] = new_v;
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
// while after each piece of work, as updates come step after step, then sleeps. If it is busy (two updates at once, e.g. two devices'
// programs), the caller does all the work itself.
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
  const Coefficients coefficients{c[0], c[1], c[2], c[3], c[4], c[5] != 0.0f};
  if (total >= kSplitElements) {
    Helper::Get().Run(tensors, coefficients, total);
  } else {
    UpdateSpan(tensors, coefficients, 0, total);
  }
}

struct Registration {
  Registration() {
    xla::CustomCallTargetRegistry::Global()->Register(
        "adam_xla_adam_update_f32", reinterpret_cast<void*>(&AdamUpdateF32), "Host");
  }
} registration;

}  // namespace
