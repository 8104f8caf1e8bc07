// shim_abi.h: what the kernel side of the CPU shim, its runtime and minibn/cuda/executor.py
// (through ctypes) agree on. Plain C layouts only: executor.py mirrors these structs field by
// field, so a change here is a change there (the executor checks sizeof at load time).
#pragma once

#include <cstdint>

#define MINIBN_HIDDEN __attribute__((visibility("hidden")))

extern "C" {

// One pointer argument of a launch: the array it points into, so that every access can be
// checked against its bounds (memcheck), its written bytes (initcheck) and its shadow (racecheck).
struct minibn_buffer {
    uint64_t base;         // first byte of the array
    uint64_t nbytes;       // its size
    uint64_t lo, hi;       // the allocation around it (red zones included); lo == hi: none known
    unsigned char* init;   // one byte per array byte, 1 = written; null: all counted as written
    int32_t param;         // index of the kernel parameter
    int32_t is_const;      // declared `const T*`: reads are not recorded (the kernel never writes)
};

// A static __shared__ variable, as an offset range inside the shim's shared-memory section.
struct minibn_shared_var {
    uint64_t offset, size;
};

// What went wrong, filled by the runtime, worded by the executor (it knows the names).
enum {
    MINIBN_OK = 0,
    MINIBN_RACE = 1,      // racecheck
    MINIBN_MEMCHECK = 2,  // an access outside every array
    MINIBN_INITCHECK = 3, // a read of memory nothing wrote
    MINIBN_SYNCCHECK = 4, // barriers and warp collectives used wrongly (message filled)
    MINIBN_LAUNCH = 5,    // deadlock, timeout, out of memory (message filled)
};
enum { MINIBN_READ = 1, MINIBN_WRITE = 2, MINIBN_ATOMIC = 3 };
enum { MINIBN_GLOBAL = 1, MINIBN_SHARED_STATIC = 2, MINIBN_SHARED_DYNAMIC = 3 };
// Why two racing accesses are unordered.
enum {
    MINIBN_SAME_BLOCK = 1,      // same barrier interval: no __syncthreads() between them
    MINIBN_SAME_WARP = 2,       // same warp, no __syncwarp()/shuffle between them
    MINIBN_CROSS_BLOCK = 3,     // different blocks, nothing publishes one to the other
    MINIBN_NO_ACQUIRE = 4,      // the reader's atomic saw the writer's release, but no fence follows it
    MINIBN_NO_RELEASE = 5,      // the writer took its ticket (an atomic) with no fence after the write
};

struct minibn_report {
    int32_t kind, access, other_access, region, buffer, size, why, other_valid;
    int64_t offset;             // byte offset: from the buffer base, the section start, or dynamic smem
    uint32_t thread, block;     // linear indices of the thread (in its block) and of its block
    uint32_t other_thread, other_block;
    uint64_t pc, other_pc;      // code offsets in the shared library (0: unknown)
    int32_t line, other_line;   // source lines, when the runtime knows them (atomics, barriers)
    uint64_t counts[6];         // errors found per kind (the first one is described)
    char message[1024];
};

struct minibn_launch_args {
    void** args;                // CUDA's convention: one pointer to each argument's value
    uint32_t grid[3], block[3];
    uint64_t shared_mem;
    int32_t order;              // 0 forward, 1 reverse, 2 shuffle
    int32_t sanitize;           // 0: run only; 1: racecheck, memcheck, initcheck, synccheck
    uint64_t seed;
    double timeout_s;
    int32_t nbuffers, nshared;
    minibn_buffer* buffers;
    minibn_shared_var* shared_vars;
    minibn_report* report;
};

// The runtime, called by the kernel side (one copy per compiled kernel library).
MINIBN_HIDDEN int minibn_rt_launch(void (*body)(void**), const minibn_launch_args* a);
// `file` and `line` are where the kernel called it (__FILE__/__LINE__, so #line names count).
MINIBN_HIDDEN void minibn_rt_syncthreads(const char* file, int line);
MINIBN_HIDDEN void minibn_rt_syncwarp(unsigned mask, const char* file, int line);
MINIBN_HIDDEN uint64_t minibn_rt_shfl(unsigned mask, uint64_t raw, int src_lane, int op, const char* file, int line);
MINIBN_HIDDEN unsigned minibn_rt_vote(unsigned mask, int pred, int op, const char* file, int line);
MINIBN_HIDDEN unsigned minibn_rt_activemask(const char* file, int line);
MINIBN_HIDDEN void minibn_rt_fence(const char* file, int line);
MINIBN_HIDDEN void minibn_rt_atomic(void* p, unsigned size, void* call_site);
MINIBN_HIDDEN int minibn_rt_lane(void);
// sizeof of the structs above, so that the executor can refuse a library built from another ABI.
__attribute__((visibility("default"))) void minibn_abi_sizes(uint64_t* out);

}  // extern "C"

// Warp collectives, named in messages.
enum {
    MINIBN_OP_SYNCWARP = 1,
    MINIBN_OP_SHFL = 2,
    MINIBN_OP_SHFL_UP = 3,
    MINIBN_OP_SHFL_DOWN = 4,
    MINIBN_OP_SHFL_XOR = 5,
    MINIBN_OP_BALLOT = 6,
    MINIBN_OP_ALL = 7,
    MINIBN_OP_ANY = 8,
};
