// One-pass dense Adam update of a float32 tensor, registered as an XLA:CPU custom call target.
//
// XLA:CPU compiles the update into three loops per tensor (m, v, then the variable from the
// new m and v), which moves 40 bytes per parameter; this loop reads param, grad, m and v and
// writes param, m and v once: 28 bytes. adam_xla/cpu_kernel.py compiles this file on first use
// and calls it from the update's XLA program with the outputs aliased to the inputs, so the
// update stays in place.
//
// The arithmetic is update_rule.adam_step's, operation for operation, in float32 and without
// fused multiply-adds (built with -ffp-contract=off): the results are XLA's to within float32
// roundings (XLA may fuse or order a multiply-add differently; see tests/cpu_kernel_test.py).

#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <string>

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

// Inputs: param, grad, m, v (n floats each) and coefficients {lr_t, beta_1, beta_2, epsilon,
// decay, apply}; outputs: the tuple (param, m, v). `opaque` is n in decimal.
void AdamUpdateF32(void* out, const void** in, const char* opaque, size_t opaque_len,
                   XlaCustomCallStatus_* /*status*/) {
  const long n = std::strtol(std::string(opaque, opaque_len).c_str(), nullptr, 10);
  void** outs = static_cast<void**>(out);
  float* param_out = static_cast<float*>(outs[0]);
  float* m_out = static_cast<float*>(outs[1]);
  float* v_out = static_cast<float*>(outs[2]);
  const float* param = static_cast<const float*>(in[0]);
  const float* grad = static_cast<const float*>(in[1]);
  const float* m = static_cast<const float*>(in[2]);
  const float* v = static_cast<const float*>(in[3]);
  const float* c = static_cast<const float*>(in[4]);
  const float lr_t = c[0], beta_1 = c[1], beta_2 = c[2], epsilon = c[3], decay = c[4];
  const bool apply = c[5] != 0.0f;
  const float one_minus_beta_1 = 1.0f - beta_1, one_minus_beta_2 = 1.0f - beta_2;
  if (!apply) {  // apply_if was false: the outputs are the inputs
    if (param_out == param && m_out == m && v_out == v) return;  // aliased, as called
    PARALLEL_SAFE_LOOP
    for (long i = 0; i < n; ++i) {
      param_out[i] = param[i];
      m_out[i] = m[i];
      v_out[i] = v[i];
    }
    return;
  }
  if (decay != 0.0f) {
    PARALLEL_SAFE_LOOP
    for (long i = 0; i < n; ++i) {
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
  for (long i = 0; i < n; ++i) {
    const float g = grad[i];
    const float new_m = beta_1 * m[i] + one_minus_beta_1 * g;
    const float new_v = beta_2 * v[i] + one_minus_beta_2 * (g * g);
    param_out[i] = param[i] - lr_t * new_m / (std::sqrt(new_v) + epsilon);
    m_out[i] = new_m;
    v_out[i] = new_v;
  }
}

struct Registration {
  Registration() {
    xla::CustomCallTargetRegistry::Global()->Register(
        "adam_xla_adam_update_f32", reinterpret_cast<void*>(&AdamUpdateF32), "Host");
  }
} registration;

}  // namespace
