// The machine's read+write memory bandwidth for native code on every core, streamed as Adam's
// update streams: four float32 arrays read (p, g, m, v) and three written in place (p, m, v),
// 28 bytes per element per pass. Each thread owns one contiguous chunk of every array, touches
// it first (so its pages are local to that thread) and streams it pass after pass. Loaded with
// ctypes by tools/bench/stream_probe.py; plain C++17, no TensorFlow.

#include <cstdint>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

struct Probe {
  int64_t n;
  int threads;
  float* arrays[4];  // p, g, m, v
};

// f(begin, end) on each thread's chunk of [0, n), all threads at once.
template <typename F>
void on_chunks(const Probe& probe, F f) {
  std::vector<std::thread> pool;
  for (int t = 0; t < probe.threads; ++t) {
    pool.emplace_back(f, probe.n * t / probe.threads, probe.n * (t + 1) / probe.threads);
  }
  for (std::thread& thread : pool) thread.join();
}

}  // namespace

extern "C" {

void* stream_probe_create(int64_t n, int threads) {
  // One block; array k starts k x 256 B past a 4 KiB boundary: arrays at equal offsets modulo
  // 4 KiB alias in the load/store unit and the caches and stream at half the speed.
  int64_t stride = (n + 1023) / 1024 * 1024 + 64;
  float* block = static_cast<float*>(std::aligned_alloc(4096, 4 * stride * sizeof(float)));
  if (block == nullptr) return nullptr;
  Probe* probe = new Probe{n, threads < 1 ? 1 : threads, {}};
  for (int k = 0; k < 4; ++k) probe->arrays[k] = block + k * stride;
  on_chunks(*probe, [probe](int64_t begin, int64_t end) {
    float *p = probe->arrays[0], *g = probe->arrays[1], *m = probe->arrays[2],
          *v = probe->arrays[3];
    for (int64_t i = begin; i < end; ++i) p[i] = 0.0f, g[i] = 1.0f, m[i] = 0.0f, v[i] = 0.0f;
  });
  return probe;
}

// `passes` passes; x = x / 2 + g for x in p, m, v, so every value stays in [0, 2].
void stream_probe_run(void* handle, int passes) {
  Probe* probe = static_cast<Probe*>(handle);
  on_chunks(*probe, [probe, passes](int64_t begin, int64_t end) {
    float* __restrict p = probe->arrays[0];
    const float* __restrict g = probe->arrays[1];
    float* __restrict m = probe->arrays[2];
    float* __restrict v = probe->arrays[3];
    for (int pass = 0; pass < passes; ++pass) {
      for (int64_t i = begin; i < end; ++i) {
        p[i] = p[i] * 0.5f + g[i];
        m[i] = m[i] * 0.5f + g[i];
        v[i] = v[i] * 0.5f + g[i];
      }
      asm volatile("" ::: "memory");  // one pass after the other through memory, never fused
    }
  });
}

float* stream_probe_array(void* handle, int k) { return static_cast<Probe*>(handle)->arrays[k]; }

void stream_probe_free(void* handle) {
  Probe* probe = static_cast<Probe*>(handle);
  std::free(probe->arrays[0]);
  delete probe;
}

}  // extern "C"
