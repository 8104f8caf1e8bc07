// cuda_shim.h: lets g++ compile CUDA C kernel source unchanged and run it on the CPU.
//
// A correctness tool, never a speed model. Each CUDA thread is a ucontext fiber on one OS thread;
// a fiber runs until it reaches a barrier (__syncthreads, a warp shuffle or vote, __syncwarp,
// __activemask) or returns, then the scheduler (shim_runtime.cpp) runs the next one in the
// launch's schedule order (forward, reverse or a seeded shuffle). Blocks run one after another,
// so __shared__ can simply be static storage.
//
// This header is the kernel's side: CUDA's qualifiers, types and intrinsics, each barrier and
// collective routed to the runtime with the source line it was called from. The kernel is
// compiled with g++'s -fsanitize=thread *instrumentation* (no ThreadSanitizer runtime is linked):
// every load and store of the kernel becomes a call to __tsan_readN/__tsan_writeN, which the
// runtime defines itself and uses for racecheck, memcheck and initcheck. The functions here that
// touch memory on the kernel's behalf (atomics, argument unpacking) are MINIBN_NOSAN, so that
// only the kernel's own accesses are seen, each with its true kind (an atomicAdd is one atomic
// access, not a plain read and write).
//
// Included ahead of the kernel source by minibn/cuda/executor.py, which also rewrites
// `extern __shared__ T name[];` to a pointer to the launch's dynamic shared memory.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <utility>

#include "shim_abi.h"

#define MINIBN_NOSAN __attribute__((no_sanitize_thread, noinline))

// ---- CUDA qualifiers and vector types --------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Every __shared__ variable goes to one named section, so each block can start with it poisoned
// (all bits set: NaN for floats, -1 for ints), as unreliable as real uninitialized shared memory,
// and so that the sanitizer knows which accesses are to shared memory.
#define __shared__ static __attribute__((section("minibn_shared")))

struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) double2 { double x, y; };
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline int2 make_int2(int x, int y) { return {x, y}; }
static inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
static inline double2 make_double2(double x, double y) { return {x, y}; }

// The current fiber's indices (the runtime sets them at every switch) and the launch shape.
extern "C" {
extern MINIBN_HIDDEN uint3 threadIdx, blockIdx;
extern MINIBN_HIDDEN dim3 blockDim, gridDim;
extern MINIBN_HIDDEN unsigned char* minibn_dynamic_smem;
}
static constexpr int warpSize = 32;

// ---- math and intrinsics (host versions) ------------------------------------------------------
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
static inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
static inline float __int_as_float(int i) { float x; memcpy(&x, &i, 4); return x; }
static inline unsigned __float_as_uint(float x) { unsigned i; memcpy(&i, &x, 4); return i; }
static inline float __uint_as_float(unsigned i) { float x; memcpy(&x, &i, 4); return x; }
template <class T> static inline T __ldg(const T* p) { return *p; }
template <class A, class B> static inline auto min(A a, B b) { return b < a ? b : a; }
template <class A, class B> static inline auto max(A a, B b) { return a < b ? b : a; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}

// ---- barriers, fences and warp collectives: the runtime, told the calling line ------------------
static inline unsigned minibn_mask(unsigned m = 0xffffffffu) { return m; }
#define __syncthreads() minibn_rt_syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) minibn_rt_syncwarp(minibn_mask(__VA_ARGS__), __FILE__, __LINE__)
#define __activemask() minibn_rt_activemask(__FILE__, __LINE__)
// __threadfence orders this thread's memory accesses for every other block: the runtime models
// it (with atomics) to decide which cross-block accesses are ordered. A block-scope fence orders
// nothing between threads on its own (that is __syncthreads' job), so it is a no-op here.
#define __threadfence() minibn_rt_fence(__FILE__, __LINE__)
#define __threadfence_system() minibn_rt_fence(__FILE__, __LINE__)
#define __threadfence_block() ((void)0)

template <class T> static inline uint64_t minibn_raw(T v) {
    static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
    uint64_t raw = 0;
    memcpy(&raw, &v, sizeof(T));
    return raw;
}
template <class T> static inline T minibn_unraw(uint64_t raw) {
    T v;
    memcpy(&v, &raw, sizeof(T));
    return v;
}

// Source lanes follow CUDA's rules (width splits the warp into segments; a lane outside the
// range keeps its own value); the runtime does the exchange and checks the mask.
template <class T> static inline T minibn_shfl_sync(const char* file, int line, unsigned mask, T v, int src, int width = 32) {
    int lane = minibn_rt_lane();
    int s = lane - lane % width + src % width;
    return minibn_unraw<T>(minibn_rt_shfl(mask, minibn_raw(v), s, MINIBN_OP_SHFL, file, line));
}
template <class T> static inline T minibn_shfl_up_sync(const char* file, int line, unsigned mask, T v, unsigned delta, int width = 32) {
    int lane = minibn_rt_lane();
    int s = lane % width >= (int)delta ? lane - (int)delta : lane;
    return minibn_unraw<T>(minibn_rt_shfl(mask, minibn_raw(v), s, MINIBN_OP_SHFL_UP, file, line));
}
template <class T> static inline T minibn_shfl_down_sync(const char* file, int line, unsigned mask, T v, unsigned delta, int width = 32) {
    int lane = minibn_rt_lane();
    int s = lane % width + (int)delta < width ? lane + (int)delta : lane;
    return minibn_unraw<T>(minibn_rt_shfl(mask, minibn_raw(v), s, MINIBN_OP_SHFL_DOWN, file, line));
}
template <class T> static inline T minibn_shfl_xor_sync(const char* file, int line, unsigned mask, T v, int lane_mask, int width = 32) {
    int lane = minibn_rt_lane();
    int s = lane ^ lane_mask;
    if (s >= (lane / width + 1) * width) s = lane;  // later segments are out of reach
    return minibn_unraw<T>(minibn_rt_shfl(mask, minibn_raw(v), s, MINIBN_OP_SHFL_XOR, file, line));
}
#define __shfl_sync(...) minibn_shfl_sync(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) minibn_shfl_up_sync(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) minibn_shfl_down_sync(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) minibn_shfl_xor_sync(__FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(mask, pred) minibn_rt_vote((mask), (pred) ? 1 : 0, MINIBN_OP_BALLOT, __FILE__, __LINE__)
#define __all_sync(mask, pred) ((int)minibn_rt_vote((mask), (pred) ? 1 : 0, MINIBN_OP_ALL, __FILE__, __LINE__))
#define __any_sync(mask, pred) ((int)minibn_rt_vote((mask), (pred) ? 1 : 0, MINIBN_OP_ANY, __FILE__, __LINE__))

// ---- atomics ------------------------------------------------------------------------------------
// Fibers switch only at barriers, so a read-modify-write is never interleaved: each atomic is a
// plain update that returns the old value, as CUDA's do. The runtime is told first, so that
// racecheck sees one atomic access (and models the release/acquire of the last-block ticket).
#define MINIBN_ATOMIC_OP(name, body)                                             \
    template <class T, class V> MINIBN_NOSAN static T name(T* p, V v) {          \
        minibn_rt_atomic((void*)p, sizeof(T), __builtin_return_address(0));      \
        T old = *p;                                                              \
        body;                                                                    \
        return old;                                                              \
    }
MINIBN_ATOMIC_OP(atomicAdd, *p = (T)(old + (T)v))
MINIBN_ATOMIC_OP(atomicSub, *p = (T)(old - (T)v))
MINIBN_ATOMIC_OP(atomicExch, *p = (T)v)
MINIBN_ATOMIC_OP(atomicMax, if ((T)v > old) *p = (T)v)
MINIBN_ATOMIC_OP(atomicMin, if ((T)v < old) *p = (T)v)
MINIBN_ATOMIC_OP(atomicAnd, *p = (T)(old & (T)v))
MINIBN_ATOMIC_OP(atomicOr, *p = (T)(old | (T)v))
MINIBN_ATOMIC_OP(atomicXor, *p = (T)(old ^ (T)v))
MINIBN_ATOMIC_OP(atomicInc, *p = old >= (T)v ? (T)0 : (T)(old + 1))
MINIBN_ATOMIC_OP(atomicDec, *p = (old == 0 || old > (T)v) ? (T)v : (T)(old - 1))
#undef MINIBN_ATOMIC_OP
template <class T, class C, class V> MINIBN_NOSAN static T atomicCAS(T* p, C cmp, V v) {
    minibn_rt_atomic((void*)p, sizeof(T), __builtin_return_address(0));
    T old = *p;
    if (old == (T)cmp) *p = (T)v;
    return old;
}

// ---- calling a kernel ---------------------------------------------------------------------------
namespace minibn_shim {
// Calls a kernel with arguments given as an array of pointers to their values (CUDA's kernel
// parameter convention), recovering each parameter's type from the kernel's own signature.
// Not instrumented: reading the argument array is the launcher's access, not the kernel's.
template <class... A, std::size_t... I>
MINIBN_NOSAN static void call(void (*k)(A...), void** a, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<A>*>(a[I])...);
}
template <class... A> MINIBN_NOSAN static void call(void (*k)(A...), void** a) {
    call(k, a, std::index_sequence_for<A...>{});
}
}  // namespace minibn_shim
