// A small CUDA emulator: the device-side half. With this header (and emu/cuda_bf16.h, which
// includes it) emlab's .cu sources compile with a C++20 host compiler and run on the CPU: each
// block's threads are real threads, __syncthreads is a block barrier, warp shuffles exchange
// values through a per-warp barrier, and misuse that would be undefined on a GPU (a barrier or a
// shuffle that the threads reach at different places, a shuffle over exited or missing lanes) is
// reported as an error instead of being silently tolerated. emu/runner.cpp is the host side.
//
// One source rewrite is applied before compiling (emlab_kernels::emu does it): a C++ shim cannot
// give `extern __shared__ T name[];` its meaning (`extern static` does not exist), so each such
// declaration becomes `T* const name = ::emu::dynamic_shared<T>();`. Static `__shared__` arrays
// become function-local statics: blocks run one after another, so one copy serves every block.
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <source_location>
#include <string>
#include <thread>
#include <type_traits>

// EMU_SCAN: a preprocessor-only pass that lists the kernels (emlab_kernels::emu looks for the
// marker in front of each extern "C" __global__ function, macro-generated ones included).
#ifdef EMU_SCAN
#define __global__ emu_kernel_marker
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)
#define __restrict__ __restrict

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

// The thread's index is per thread; the block's index and both sizes are the same for every
// thread of the running block (blocks run one at a time), so plain globals, written by the
// runner before it starts a block's threads.
inline thread_local uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;
constexpr int warpSize = 32;

namespace emu {

// First error of the running launch (a kernel-visible misuse); the runner reports it.
void fail(const std::string& msg);
// The launch's dynamic shared memory (poisoned before each block; writes past the launch's
// shared_mem_bytes are reported after the block).
void* dynamic_shared_base();
template <typename T>
T* dynamic_shared() {
    return static_cast<T*>(dynamic_shared_base());
}

inline std::string where(const std::source_location& l) {
    return std::string(l.file_name()) + ":" + std::to_string(l.line());
}

// A barrier for a fixed group of threads that tolerates threads leaving the group (a thread that
// returns from the kernel arrives-and-drops, as exited threads count as arrived on the GPU).
// Every thread of one phase must arrive from the same source line; a mismatch is a divergent
// barrier, undefined on the GPU, and reported.
class Barrier {
  public:
    void reset(unsigned n) {
        std::lock_guard<std::mutex> lk(m_);
        expected_ = n;
        arrived_ = 0;
        exited_ = 0;
        site_line_ = 0;
        site_file_ = nullptr;
    }
    // Returns the phase number this thread took part in.
    unsigned arrive_and_wait(const std::source_location& loc, const char* what) {
        unsigned g;
        {
            std::lock_guard<std::mutex> lk(m_);
            g = gen_.load(std::memory_order_relaxed);
            if (arrived_ == 0) {
                site_line_ = loc.line();
                site_file_ = loc.file_name();
            } else if (site_line_ != loc.line() || std::strcmp(site_file_, loc.file_name()) != 0) {
                fail(std::string("divergent ") + what + ": threads of one " + (what[0] == '_' ? "block" : "warp") +
                     " wait at " + site_file_ + ":" + std::to_string(site_line_) + " and at " + where(loc) +
                     " in the same phase (undefined on the GPU)");
            }
            arrived_++;
            if (arrived_ == expected_) {
                release(g);
                return g;
            }
        }
        while (gen_.load(std::memory_order_acquire) == g) gen_.wait(g, std::memory_order_acquire);
        if (what[0] == '_') jitter();
        return g;
    }
    void arrive_and_drop() {
        std::lock_guard<std::mutex> lk(m_);
        expected_--;
        exited_++;
        if (arrived_ > 0 && arrived_ == expected_) release(gen_.load(std::memory_order_relaxed));
    }
    unsigned exited() {
        std::lock_guard<std::mutex> lk(m_);
        return exited_;
    }
    unsigned phase() const { return gen_.load(std::memory_order_acquire); }

  private:
    // With EMLAB_EMU_JITTER_US set (the runner reads it), one thread in 32 leaving a block
    // barrier sleeps that long, so the others run ahead into the next phase: a hunt for a
    // missing barrier (shared memory reused before every thread has read it), which the host
    // scheduler, waking threads in order, rarely shows. Off by default: it costs wall time.
    static void jitter() {
        if (jitter_us == 0) return;
        static thread_local uint32_t x = 0x9E3779B9u ^ (uint32_t)(uintptr_t)&x;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if ((x & 31) == 0) std::this_thread::sleep_for(std::chrono::microseconds(jitter_us));
    }

  public:
    static inline unsigned jitter_us = 0;

  private:
    void release(unsigned g) {
        arrived_ = 0;
        gen_.store(g + 1, std::memory_order_release);
        gen_.notify_all();
    }
    std::mutex m_;
    std::atomic<unsigned> gen_{0};
    unsigned expected_ = 0, arrived_ = 0, exited_ = 0;
    unsigned site_line_ = 0;
    const char* site_file_ = nullptr;
};

// Per-warp exchange slots, double-buffered by phase parity: a lane can write the next phase's
// slot while a slower lane still reads this phase's.
struct Warp {
    Barrier bar;
    unsigned size = 32;  // lanes present (the last warp of a block may be partial)
    uint64_t slot[2][32];
};

struct ThreadCtx {
    Barrier* block = nullptr;
    Warp* warp = nullptr;
    unsigned lane = 0;
};
inline thread_local ThreadCtx ctx;

template <typename T>
T shuffle(unsigned mask, T v, int (*src)(int lane, int arg, int width), int arg, int width,
          const std::source_location& loc) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a value wider than 8 bytes");
    Warp* w = ctx.warp;
    if (mask != 0xffffffffu) fail("warp shuffle with mask " + std::to_string(mask) + " at " + where(loc) + ": the emulator supports full-warp masks only");
    if (w->size != 32) fail("warp shuffle at " + where(loc) + " in a partial warp (blockDim not a multiple of 32)");
    if (w->bar.exited() != 0) fail("warp shuffle at " + where(loc) + " after lanes of the warp returned (they are in the mask)");
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0) fail("warp shuffle width " + std::to_string(width) + " at " + where(loc));
    const unsigned g = w->bar.phase();
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w->slot[g & 1][ctx.lane] = bits;
    w->bar.arrive_and_wait(loc, "warp shuffle");
    const int s = src((int)ctx.lane, arg, width);
    uint64_t got = w->slot[g & 1][(s >= 0 && s < 32) ? s : ctx.lane];
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}

inline int src_xor(int lane, int m, int width) {
    const int s = lane ^ m;
    return (s / width == lane / width) ? s : lane;  // outside the lane's segment: its own value
}
inline int src_down(int lane, int d, int width) {
    return (lane % width) + d < width ? lane + d : lane;
}
inline int src_up(int lane, int d, int width) {
    return (lane % width) - d >= 0 ? lane - d : lane;
}
inline int src_idx(int lane, int s, int width) {
    return (lane / width) * width + (s % width);
}

}  // namespace emu

inline void __syncthreads(std::source_location loc = std::source_location::current()) {
    emu::ctx.block->arrive_and_wait(loc, "__syncthreads");
}
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location loc = std::source_location::current()) {
    if (mask != 0xffffffffu) emu::fail("__syncwarp with a partial mask at " + emu::where(loc));
    emu::ctx.warp->bar.arrive_and_wait(loc, "warp __syncwarp");
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, std::source_location loc = std::source_location::current()) {
    return emu::shuffle(mask, v, emu::src_xor, lane_mask, width, loc);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, std::source_location loc = std::source_location::current()) {
    return emu::shuffle(mask, v, emu::src_down, (int)delta, width, loc);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, std::source_location loc = std::source_location::current()) {
    return emu::shuffle(mask, v, emu::src_up, (int)delta, width, loc);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32, std::source_location loc = std::source_location::current()) {
    return emu::shuffle(mask, v, emu::src_idx, src_lane, width, loc);
}

// Device atomics: real atomics, since the threads of a block run concurrently.
template <typename T>
inline T atomicAdd(T* p, T v) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, int> ||
                      std::is_same_v<T, unsigned int> || std::is_same_v<T, unsigned long long>,
                  "atomicAdd: type not emulated");
    return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}
template <typename T>
inline T atomicMax(T* p, T v) {
    static_assert(std::is_integral_v<T>, "atomicMax: integers only");
    std::atomic_ref<T> a(*p);
    T cur = a.load(std::memory_order_relaxed);
    while (cur < v && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
    }
    return cur;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// bfloat16: the upper half of an f32. Conversion from f32 rounds to nearest even and keeps NaN
// a (quiet) NaN, as cuda_bf16.h does.
struct __nv_bfloat16 {
    uint16_t x;
};
typedef __nv_bfloat16 nv_bfloat16;
inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t u = (uint32_t)h.x << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(uint16_t)((u >> 16) | 0x0040u)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }

// Fast-math intrinsics some kernels use: the precise host functions (accuracy differs from the
// GPU's approximations by a few units in the last place).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
