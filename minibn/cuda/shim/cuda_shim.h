// cuda_shim.h: lets g++ compile CUDA C kernel source unchanged and run it on the CPU.
//
// A correctness tool, never a speed model. Each CUDA thread is a ucontext fiber on one OS thread;
// a fiber runs until it reaches a barrier (__syncthreads, a warp shuffle, __syncwarp) or returns,
// then the scheduler runs the next one in the launch's schedule order (forward, reverse or a
// seeded shuffle). Blocks run one after another, so __shared__ can simply be static storage.
// The scheduler, not the hardware, decides when a barrier opens, which lets it be stricter than a
// GPU: a __syncthreads some threads skip, a shuffle naming a lane that exited, and any state where
// no thread can move (a deadlock) stop the launch with an error message instead of hanging.
//
// Included ahead of the kernel source by minibn/cuda/executor.py (g++ -include style), which also
// rewrites `extern __shared__ T name[];` to a pointer to the launch's dynamic shared memory.
#pragma once

#include <csetjmp>
#include <csignal>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <ctime>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
#include <utility>

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
// (all bits set: NaN for floats, -1 for ints), as unreliable as real uninitialized shared memory.
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
static inline double2 make_double2(double x, double y) { return {x, y}; }

static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static constexpr int warpSize = 32;
static unsigned char* minibn_dynamic_smem;

// ---- math and intrinsics (host versions) ------------------------------------------------------
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
template <class T> static inline T __ldg(const T* p) { return *p; }
template <class A, class B> static inline auto min(A a, B b) { return b < a ? b : a; }
template <class A, class B> static inline auto max(A a, B b) { return a < b ? b : a; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
// Blocks run one at a time, in order, so memory is always coherent: fences have nothing to do.
static inline void __threadfence() {}
static inline void __threadfence_block() {}

// Fibers switch only at barriers, so a read-modify-write can never be interleaved: atomics are
// plain updates that return the old value, as CUDA's do.
template <class T> static inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <class T> static inline T atomicSub(T* p, T v) { T old = *p; *p = old - v; return old; }
template <class T> static inline T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <class T> static inline T atomicMax(T* p, T v) { T old = *p; if (v > old) *p = v; return old; }
template <class T> static inline T atomicMin(T* p, T v) { T old = *p; if (v < old) *p = v; return old; }
template <class T> static inline T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }
static inline unsigned atomicInc(unsigned* p, unsigned limit) {
    unsigned old = *p;
    *p = old >= limit ? 0u : old + 1u;
    return old;
}

// ---- the scheduler -----------------------------------------------------------------------------
namespace minibn_shim {

enum State { RUNNABLE, AT_SYNC, AT_WARP, DONE };
enum Order { FORWARD = 0, REVERSE = 1, SHUFFLE = 2 };

struct Thread {
    ucontext_t ctx;
    State state;
    unsigned syncs;      // __syncthreads passed (or reached), compared across the block
    unsigned warp_mask;  // mask of the warp barrier this thread waits at
    uint3 idx;
};

struct Launch {
    void (*body)(void**);
    void** args;
    Thread* threads;
    unsigned nthreads;
    char* stacks;
    size_t stack_size;
    ucontext_t sched;
    unsigned current;
    uint64_t* slots;  // one 8-byte value per thread, for shuffles and votes
    char* err;
    int errlen;
    bool failed;
};

static Launch* L;

static inline void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void fail(const char* fmt, ...) {
    if (L->failed) return;
    L->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L->err, (size_t)L->errlen, fmt, ap);
    va_end(ap);
}

static inline Thread& self() { return L->threads[L->current]; }
static inline unsigned linear_id() { return L->current; }

static inline void yield() { swapcontext(&self().ctx, &L->sched); }

static inline void sync_block() {
    self().state = AT_SYNC;
    self().syncs++;
    yield();
}

static inline void sync_warp(unsigned mask) {
    unsigned lane = linear_id() % 32;
    if (!(mask & (1u << lane))) {
        fail("thread %u (lane %u) used a warp mask 0x%08x that does not include its own lane",
             linear_id(), lane, mask);
    }
    self().state = AT_WARP;
    self().warp_mask = mask;
    yield();
}

// Lane-exchange through per-thread slots: write, wait for the warp, read, wait again (so that no
// lane overwrites its slot with the next shuffle's value before every lane has read this one).
template <class T> static inline T exchange(unsigned mask, T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    unsigned me = linear_id();
    unsigned base = me - me % 32;
    uint64_t raw = 0;
    memcpy(&raw, &v, sizeof(T));
    L->slots[me] = raw;
    sync_warp(mask);
    T out = v;
    unsigned src = base + (unsigned)src_lane;
    if (src_lane >= 0 && src_lane < 32 && src < L->nthreads && (mask & (1u << src_lane))) {
        memcpy(&out, &L->slots[src], sizeof(T));
    }
    sync_warp(mask);
    return out;
}

static inline void run(unsigned t) {
    Thread& th = L->threads[t];
    L->current = t;
    threadIdx = th.idx;
    swapcontext(&L->sched, &th.ctx);
}

static void fiber_entry() {
    L->body(L->args);
    self().state = DONE;  // returning resumes the scheduler through uc_link
}

static inline void make_order(unsigned* perm, unsigned n, int order, uint64_t seed) {
    for (unsigned i = 0; i < n; ++i) perm[i] = order == REVERSE ? n - 1 - i : i;
    if (order != SHUFFLE) return;
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    for (unsigned i = n; i > 1; --i) {  // Fisher-Yates with xorshift64*
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        unsigned j = (unsigned)((s * 0x2545F4914F6CDD1Dull) % i);
        unsigned tmp = perm[i - 1]; perm[i - 1] = perm[j]; perm[j] = tmp;
    }
}

static inline const char* state_name(State s) {
    switch (s) {
        case RUNNABLE: return "running";
        case AT_SYNC: return "waiting at __syncthreads()";
        case AT_WARP: return "waiting at a warp shuffle/__syncwarp";
        default: return "exited";
    }
}

// Open every warp barrier whose named lanes have all arrived. Returns true if one opened.
static inline bool release_warps() {
    bool released = false;
    for (unsigned base = 0; base < L->nthreads; base += 32) {
        unsigned lanes = L->nthreads - base < 32 ? L->nthreads - base : 32;
        for (unsigned l = 0; l < lanes; ++l) {
            Thread& t = L->threads[base + l];
            if (t.state != AT_WARP) continue;
            bool ready = true;
            for (unsigned k = 0; k < lanes && ready; ++k) {
                if (!(t.warp_mask & (1u << k))) continue;
                Thread& o = L->threads[base + k];
                if (o.state == DONE) {
                    fail("thread %u waits at a warp shuffle/__syncwarp whose mask 0x%08x names "
                         "lane %u (thread %u), which has already exited",
                         base + l, t.warp_mask, k, base + k);
                    return false;
                }
                ready = o.state == AT_WARP && o.warp_mask == t.warp_mask;
            }
            if (!ready) continue;
            for (unsigned k = 0; k < lanes; ++k)
                if (t.warp_mask & (1u << k)) L->threads[base + k].state = RUNNABLE;
            released = true;
        }
    }
    return released;
}

static inline void describe_deadlock(const uint3& b) {
    char buf[400];
    int n = 0;
    for (unsigned i = 0; i < L->nthreads && n < (int)sizeof(buf) - 80; ++i) {
        // Report where the first few threads of each distinct state stand.
        if (i > 0 && L->threads[i].state == L->threads[i - 1].state) continue;
        n += snprintf(buf + n, sizeof(buf) - n, "%sthread %u %s", n ? "; " : "", i,
                      state_name(L->threads[i].state));
    }
    fail("deadlock in block (%u,%u,%u): no thread can continue (%s)", b.x, b.y, b.z, buf);
}

static inline void run_block(const uint3& b, const unsigned* perm) {
    for (unsigned t = 0; t < L->nthreads; ++t) {
        Thread& th = L->threads[t];
        th.state = RUNNABLE;
        th.syncs = 0;
        th.idx = {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
        getcontext(&th.ctx);
        th.ctx.uc_stack.ss_sp = L->stacks + (size_t)t * L->stack_size;
        th.ctx.uc_stack.ss_size = L->stack_size;
        th.ctx.uc_link = &L->sched;
        makecontext(&th.ctx, fiber_entry, 0);
    }
    for (;;) {
        for (unsigned k = 0; k < L->nthreads && !L->failed; ++k)
            if (L->threads[perm[k]].state == RUNNABLE) run(perm[k]);
        if (L->failed) return;
        if (release_warps()) continue;
        if (L->failed) return;
        unsigned live = 0, at_sync = 0, done_id = 0, sync_id = 0;
        bool any_done = false;
        for (unsigned t = 0; t < L->nthreads; ++t) {
            State s = L->threads[t].state;
            if (s == DONE) { any_done = true; done_id = t; continue; }
            live++;
            if (s == AT_SYNC) { at_sync++; sync_id = t; }
        }
        if (live == 0) break;
        if (at_sync == live && any_done) {
            fail("divergent __syncthreads() in block (%u,%u,%u): thread %u exited after %u "
                 "barrier(s) while thread %u waits at barrier %u; every thread of a block must "
                 "reach every __syncthreads() (an early `return` before one is the usual cause)",
                 b.x, b.y, b.z, done_id, L->threads[done_id].syncs, sync_id,
                 L->threads[sync_id].syncs);
            return;
        }
        if (at_sync == live) {
            for (unsigned t = 0; t < L->nthreads; ++t) L->threads[t].state = RUNNABLE;
            continue;
        }
        describe_deadlock(b);
        return;
    }
    for (unsigned t = 1; t < L->nthreads; ++t) {
        if (L->threads[t].syncs != L->threads[0].syncs) {
            fail("divergent __syncthreads() in block (%u,%u,%u): thread %u passed %u barrier(s), "
                 "thread 0 passed %u; every thread of a block must reach every __syncthreads()",
                 b.x, b.y, b.z, t, L->threads[t].syncs, L->threads[0].syncs);
            return;
        }
    }
}

// A thread that never reaches a barrier cannot be preempted by the scheduler, so a kernel that
// spins on a value another block writes (blocks run one after another here) would hang. A CPU-time
// timer on this OS thread interrupts it and jumps back to the launch, which reports the timeout.
static sigjmp_buf watchdog_jump;
static void on_watchdog(int) { siglongjmp(watchdog_jump, 1); }

struct Watchdog {
    int signo = SIGRTMIN + 5;
    struct sigaction previous {};
    timer_t timer{};
    bool armed = false;

    void arm(double seconds) {
        struct sigaction action {};
        action.sa_handler = on_watchdog;
        sigemptyset(&action.sa_mask);
        sigaction(signo, &action, &previous);
        struct sigevent event {};
        event.sigev_notify = SIGEV_THREAD_ID;
        event.sigev_signo = signo;
        event._sigev_un._tid = (pid_t)syscall(SYS_gettid);
        if (timer_create(CLOCK_THREAD_CPUTIME_ID, &event, &timer) != 0) return;
        struct itimerspec when {};
        when.it_value.tv_sec = (time_t)seconds;
        when.it_value.tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9);
        armed = timer_settime(timer, 0, &when, nullptr) == 0;
    }
    ~Watchdog() {
        if (armed) timer_delete(timer);
        sigaction(signo, &previous, nullptr);
    }
};

extern "C" char __start_minibn_shared[] __attribute__((weak));
extern "C" char __stop_minibn_shared[] __attribute__((weak));

static inline int launch(void (*body)(void**), void** args, const unsigned* grid,
                         const unsigned* block, size_t shared_mem, int order, uint64_t seed,
                         double timeout_s, char* err, int errlen) {
    Launch launch_state{};
    L = &launch_state;
    L->body = body;
    L->args = args;
    L->err = err;
    L->errlen = errlen;
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    unsigned nthreads = block[0] * block[1] * block[2];
    unsigned nblocks = grid[0] * grid[1] * grid[2];
    L->nthreads = nthreads;
    L->stack_size = 64 * 1024;
    L->threads = (Thread*)calloc(nthreads, sizeof(Thread));
    L->stacks = (char*)malloc(nthreads * L->stack_size);
    L->slots = (uint64_t*)calloc(nthreads, sizeof(uint64_t));
    // Dynamic shared memory gets a guard zone behind it: a kernel that writes past shared_mem
    // is stopped with an error instead of corrupting the heap (on a GPU: an illegal address).
    const size_t guard = 64 * 1024;
    unsigned char* dyn = (unsigned char*)malloc(shared_mem + guard);
    unsigned* tperm = (unsigned*)malloc(nthreads * sizeof(unsigned));
    unsigned* bperm = (unsigned*)malloc(nblocks * sizeof(unsigned));
    if (!L->threads || !L->stacks || !L->slots || !dyn || !tperm || !bperm) {
        fail("out of memory for %u threads per block", nthreads);
    } else {
        minibn_dynamic_smem = dyn;
        make_order(bperm, nblocks, order, seed ^ 0xB10C);
        Watchdog watchdog;
        volatile unsigned k = 0;  // survives the jump back from the watchdog
        if (sigsetjmp(watchdog_jump, 1)) {
            fail("block (%u,%u,%u) still running after %.3g s of CPU time: a thread loops without "
                 "end, or spins waiting for a value another block writes (here blocks run one "
                 "after another, so a block never sees a later block's writes)",
                 blockIdx.x, blockIdx.y, blockIdx.z, timeout_s);
            k = nblocks;
        } else {
            watchdog.arm(timeout_s);
        }
        for (; k < nblocks && !L->failed; ++k) {
            unsigned id = bperm[k];
            blockIdx = {id % grid[0], (id / grid[0]) % grid[1], id / (grid[0] * grid[1])};
            if (__start_minibn_shared != __stop_minibn_shared)
                memset(__start_minibn_shared, 0xFF, (size_t)(__stop_minibn_shared - __start_minibn_shared));
            memset(dyn, 0xFF, shared_mem + guard);
            make_order(tperm, nthreads, order, seed + id);
            run_block(blockIdx, tperm);
            for (size_t i = shared_mem; i < shared_mem + guard && !L->failed; ++i) {
                if (dyn[i] != 0xFF) {
                    fail("block (%u,%u,%u) wrote byte %zu of dynamic shared memory, past the end of "
                         "it (the launch gave shared_mem=%zu bytes)",
                         blockIdx.x, blockIdx.y, blockIdx.z, i, shared_mem);
                }
            }
        }
    }
    free(L->threads); free(L->stacks); free(L->slots); free(dyn); free(tperm); free(bperm);
    bool failed = L->failed;
    L = nullptr;
    return failed ? 1 : 0;
}

// Calls a kernel with arguments given as an array of pointers to their values (CUDA's kernel
// parameter convention), recovering each parameter's type from the kernel's own signature.
template <class... A, std::size_t... I>
static inline void call(void (*k)(A...), void** a, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<A>*>(a[I])...);
}
template <class... A> static inline void call(void (*k)(A...), void** a) {
    call(k, a, std::index_sequence_for<A...>{});
}

}  // namespace minibn_shim

// ---- barriers and warp primitives, as CUDA spells them ------------------------------------------
static inline void __syncthreads() { minibn_shim::sync_block(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { minibn_shim::sync_warp(mask); }
static inline unsigned __activemask() { return 0xffffffffu; }

static inline int minibn_lane() { return (int)(minibn_shim::linear_id() % 32); }

template <class T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    int lane = minibn_lane();
    return minibn_shim::exchange(mask, v, lane - lane % width + src % width);
}
template <class T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    int lane = minibn_lane();
    int src = lane % width >= (int)delta ? lane - (int)delta : lane;
    return minibn_shim::exchange(mask, v, src);
}
template <class T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    int lane = minibn_lane();
    int src = lane % width + (int)delta < width ? lane + (int)delta : lane;
    return minibn_shim::exchange(mask, v, src);
}
template <class T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    int lane = minibn_lane();
    int src = lane ^ lane_mask;
    if (src >= (lane / width + 1) * width) src = lane;  // later groups are out of reach
    return minibn_shim::exchange(mask, v, src);
}
static inline unsigned __ballot_sync(unsigned mask, int pred) {
    unsigned bits = 0;
    for (int k = 0; k < 32; ++k) bits |= (unsigned)(__shfl_sync(mask, pred ? 1 : 0, k) != 0) << k;
    return bits & mask;
}
static inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }
static inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
