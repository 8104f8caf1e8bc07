// shim_runtime.cpp: the CPU shim's scheduler and its sanitizer. Compiled once (without
// instrumentation) and linked into every kernel library; see cuda_shim.h for the kernel side.
//
// Scheduling. One OS thread; every CUDA thread of the current block is a ucontext fiber that runs
// until it blocks at a barrier or a warp collective, or returns. The scheduler, not the hardware,
// decides when a barrier opens, which lets it be stricter than a GPU: a __syncthreads() some
// threads skip, a shuffle naming a lane that exited, and a state where no thread can move (a
// deadlock) stop the launch with a message instead of hanging. Blocks run one after another.
//
// Sanitizing (compute-sanitizer's classes, checked on every access of the kernel):
// - memcheck: each pointer argument carries its array's bounds; an access outside every array,
//   or past the launch's dynamic shared memory, stops the launch before it happens.
// - initcheck: shared memory counts as unwritten at the start of each block, and arrays the
//   executor allocated without values (like cupy.empty) until something writes them.
// - racecheck: every 4-byte word of shared and global memory keeps a shadow of its recent
//   accesses: thread, block, barrier interval, warp clock, fence count, code address. Two
//   accesses by different threads conflict when at least one is a non-atomic write and nothing
//   orders them: a __syncthreads() between them (same block), a __syncwarp()/shuffle both lanes
//   took part in (same warp), or, across blocks (which run in no fixed order on a GPU), the
//   last-block-ticket pattern: the writer fences and then does an atomic on some word, the reader
//   does an atomic on that word after it and then fences (release, acquire). That is happens-
//   before on the CUDA memory model, so the verdict does not depend on the schedule order.
// - synccheck: every thread of a block must wait at the same __syncthreads() line; a warp
//   collective's mask must name only lanes that exist and take part; __activemask() returns the
//   lanes that really arrive together.
// The first error is described in the report; later ones are counted. memcheck and synccheck
// errors stop the launch (the access never happens); races and uninitialized reads do not.
#include <csetjmp>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <dlfcn.h>
#include <link.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include "shim_abi.h"

struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; };

extern "C" {
MINIBN_HIDDEN uint3 threadIdx, blockIdx;
MINIBN_HIDDEN dim3 blockDim, gridDim;
MINIBN_HIDDEN unsigned char* minibn_dynamic_smem;
extern char __start_minibn_shared[] __attribute__((weak, visibility("hidden")));
extern char __stop_minibn_shared[] __attribute__((weak, visibility("hidden")));
}

namespace {

enum State { RUNNABLE, AT_SYNC, AT_WARP, AT_ACTIVEMASK, DONE };
enum Order { FORWARD = 0, REVERSE = 1, SHUFFLE = 2 };

// One access, as the shadow remembers it.
struct Access {
    uint32_t tid, block;  // thread within its block, block (linear)
    uint32_t epoch;       // __syncthreads() the thread had reached
    uint32_t stamp;       // the thread's own warp-clock component
    uint32_t fence;       // __threadfence() calls the thread had made
    uint32_t pc;          // code offset in this library
    uint16_t line;        // source line (atomics), 0 if only pc is known
    uint8_t kind;         // 0 none, MINIBN_READ/WRITE/ATOMIC
    uint8_t mask;         // bytes of the word touched
};
// Per word: the last plain write, up to two readers, the last atomic.
struct Cell { Access w, r1, r2, a; };

struct Know { uint64_t who; uint32_t clock; };  // "ordered after who's writes with fence < clock"

struct Thread {
    ucontext_t ctx;
    State state;
    unsigned syncs;      // __syncthreads reached, compared across the block
    unsigned warp_mask;  // mask of the warp collective this thread waits at
    int warp_op, line;   // what it waits at, and where
    const char* file;
    unsigned result;     // __activemask()'s answer
    uint3 idx;
    uint32_t fences;
    bool wrote_since_fence;  // a plain global write not yet followed by __threadfence()
    std::vector<Know> known, pending;  // acquired (fenced) and acquired-but-not-yet-fenced
};

struct Region { uintptr_t lo, hi; };

struct Launch {
    void (*body)(void**);
    void** args;
    Thread* threads;
    unsigned nthreads, nblocks;
    uint32_t block;  // linear index of the running block
    char* stacks;
    size_t stack_size;
    ucontext_t sched;
    unsigned current;
    uint64_t* slots;  // one 8-byte value per thread, for shuffles and votes
    minibn_report* rep;
    bool failed;      // stop scheduling
    bool sanitize;
    // sanitizer state
    const minibn_buffer* buffers;
    int nbuffers;
    const minibn_shared_var* shared_vars;
    int nshared;
    std::vector<Cell*> gcells;           // per buffer, lazily allocated
    Cell* scells;                        // shared memory: static section, then dynamic
    uint32_t* sstamp;                    // per shared byte: block + 1 when written in this block
    size_t static_bytes, dynamic_bytes;
    uint32_t* vc;                        // nthreads x 32 warp clocks
    std::unordered_map<uint64_t, uint32_t> block_known;
    std::unordered_map<uintptr_t, std::vector<Know>> releases;  // per atomic global word
    std::unordered_map<uint64_t, bool> unfenced;  // threads that wrote, then did an atomic, unfenced
};

Launch* L;
Region image;  // this library's own code and data (shim state, constants)

// ---- reporting ----------------------------------------------------------------------------------

void count(int kind) { L->rep->counts[kind]++; }

bool first_error() { return L->rep->kind == MINIBN_OK; }

void fail_msg(int kind, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void fail_msg(int kind, const char* fmt, ...) {
    count(kind);
    L->failed = true;
    if (!first_error()) return;
    L->rep->kind = kind;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L->rep->message, sizeof(L->rep->message), fmt, ap);
    va_end(ap);
}

Thread& self() { return L->threads[L->current]; }

// Leave the current fiber for good: a fatal error was found inside the kernel's code.
void abandon_fiber() {
    L->failed = true;
    swapcontext(&self().ctx, &L->sched);
    abort();  // never resumed
}

uint32_t code_offset(void* pc) {
    uintptr_t p = (uintptr_t)pc;
    return p >= image.lo && p < image.hi ? (uint32_t)(p - image.lo) : 0;
}

const char* op_name(int op) {
    switch (op) {
        case MINIBN_OP_SYNCWARP: return "__syncwarp";
        case MINIBN_OP_SHFL: return "__shfl_sync";
        case MINIBN_OP_SHFL_UP: return "__shfl_up_sync";
        case MINIBN_OP_SHFL_DOWN: return "__shfl_down_sync";
        case MINIBN_OP_SHFL_XOR: return "__shfl_xor_sync";
        case MINIBN_OP_BALLOT: return "__ballot_sync";
        case MINIBN_OP_ALL: return "__all_sync";
        case MINIBN_OP_ANY: return "__any_sync";
        default: return "a warp collective";
    }
}

// ---- fibers -------------------------------------------------------------------------------------

void yield() { swapcontext(&self().ctx, &L->sched); }

void run(unsigned t) {
    Thread& th = L->threads[t];
    L->current = t;
    threadIdx = th.idx;
    swapcontext(&L->sched, &th.ctx);
}

void fiber_entry() {
    L->body(L->args);
    self().state = DONE;  // returning resumes the scheduler through uc_link
}

void make_order(unsigned* perm, unsigned n, int order, uint64_t seed) {
    for (unsigned i = 0; i < n; ++i) perm[i] = order == REVERSE ? n - 1 - i : i;
    if (order != SHUFFLE) return;
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    for (unsigned i = n; i > 1; --i) {  // Fisher-Yates with xorshift64*
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        unsigned j = (unsigned)((s * 0x2545F4914F6CDD1Dull) % i);
        unsigned tmp = perm[i - 1]; perm[i - 1] = perm[j]; perm[j] = tmp;
    }
}

unsigned lanes_of_warp(unsigned base) { return L->nthreads - base < 32 ? L->nthreads - base : 32; }

// ---- knowledge: what a thread is ordered after, across blocks -----------------------------------

uint64_t who(uint32_t block, uint32_t tid) { return (uint64_t)block * L->nthreads + tid; }

void merge(std::vector<Know>& into, uint64_t w, uint32_t clock) {
    for (Know& k : into)
        if (k.who == w) { if (clock > k.clock) k.clock = clock; return; }
    into.push_back({w, clock});
}

uint32_t known_clock(const Thread& th, uint64_t w) {
    uint32_t c = 0;
    for (const Know& k : th.known) if (k.who == w && k.clock > c) c = k.clock;
    auto it = L->block_known.find(w);
    if (it != L->block_known.end() && it->second > c) c = it->second;
    return c;
}

bool pending_has(const Thread& th, uint64_t w, uint32_t fence) {
    for (const Know& k : th.pending) if (k.who == w && k.clock > fence) return true;
    return false;
}

// Why is a cross-block access unordered? For the message only (the verdict is already made).
int cross_block_reason(uint64_t w, uint32_t fence) {
    for (unsigned t = 0; t < L->nthreads; ++t)  // some thread of this block saw it: no acquire fence
        if (pending_has(L->threads[t], w, fence)) return MINIBN_NO_ACQUIRE;
    if (L->unfenced.count(w)) return MINIBN_NO_RELEASE;
    return MINIBN_CROSS_BLOCK;
}

// ---- the shadow ---------------------------------------------------------------------------------

uint32_t* vc_of(unsigned tid) { return L->vc + (size_t)tid * 32; }

// Is the earlier access p ordered before the current thread's access? If not, why.
bool ordered(const Access& p, int* why) {
    unsigned tid = L->current;
    Thread& th = self();
    if (p.block == L->block) {
        if (p.tid == tid) return true;
        if (p.epoch < th.syncs) return true;
        if (p.tid / 32 == tid / 32) {
            if (vc_of(tid)[p.tid % 32] >= p.stamp) return true;
            *why = MINIBN_SAME_WARP;
            return false;
        }
        *why = MINIBN_SAME_BLOCK;
        return false;
    }
    uint64_t w = who(p.block, p.tid);
    if (known_clock(th, w) > p.fence) return true;
    *why = cross_block_reason(w, p.fence);
    return false;
}

struct Where {
    int region, buffer;
    int64_t offset;  // of the access, from the region's base
    unsigned size;
};

void report_race(const Access& p, const Access& cur, int why, const Where& at) {
    count(MINIBN_RACE);
    // A race explains the uninitialized reads a missing barrier also causes (which one comes
    // first depends on the schedule): describe the race.
    bool explains = L->rep->kind == MINIBN_INITCHECK && L->rep->counts[MINIBN_RACE] == 1;
    if (!first_error() && !explains) return;
    minibn_report* r = L->rep;
    r->kind = MINIBN_RACE;
    r->access = cur.kind;
    r->other_access = p.kind;
    r->region = at.region;
    r->buffer = at.buffer;
    r->offset = at.offset;
    r->size = (int32_t)at.size;
    r->why = why;
    r->thread = cur.tid;
    r->block = cur.block;
    r->other_valid = 1;
    r->other_thread = p.tid;
    r->other_block = p.block;
    r->pc = cur.pc;
    r->line = cur.line;
    r->other_pc = p.pc;
    r->other_line = p.line;
}

bool valid(const Access& a, bool shared) { return a.kind && (!shared || a.block == L->block); }

void check_pair(const Access& p, const Access& cur, bool shared, const Where& at, bool* raced) {
    if (*raced || !valid(p, shared) || !(p.mask & cur.mask)) return;
    int why = 0;
    if (!ordered(p, &why)) {
        report_race(p, cur, why, at);
        *raced = true;  // one hazard per access is enough
    }
}

void shadow_word(Cell& c, const Access& cur, bool shared, bool record_reads, const Where& at) {
    bool raced = false;
    if (cur.kind == MINIBN_WRITE) {
        check_pair(c.w, cur, shared, at, &raced);
        check_pair(c.r1, cur, shared, at, &raced);
        check_pair(c.r2, cur, shared, at, &raced);
        // An atomic by this very thread comes after every earlier atomic on the word in its
        // modification order (the last-block ticket resets its counter this way): ordered.
        bool own_atomic = valid(c.a, shared) && c.a.tid == cur.tid && c.a.block == cur.block;
        if (!own_atomic) check_pair(c.a, cur, shared, at, &raced);
        c.w = cur;
        c.r1.kind = c.r2.kind = 0;
    } else {
        check_pair(c.w, cur, shared, at, &raced);
        if (cur.kind == MINIBN_ATOMIC) {
            c.a = cur;
        } else if (record_reads) {
            if (!valid(c.r1, shared) || (c.r1.tid == cur.tid && c.r1.block == cur.block)) c.r1 = cur;
            else c.r2 = cur;
        }
    }
}

Access current_access(int kind, uint32_t pc, int line, uint8_t mask) {
    Thread& th = self();
    Access a;
    a.tid = L->current;
    a.block = L->block;
    a.epoch = th.syncs;
    a.stamp = vc_of(L->current)[L->current % 32];
    a.fence = th.fences;
    a.pc = pc;
    a.line = (uint16_t)(line > 0 && line < 65536 ? line : 0);
    a.kind = (uint8_t)kind;
    a.mask = mask;
    return a;
}

void race_words(Cell* cells, uintptr_t off, unsigned size, int kind, uint32_t pc, int line, bool shared,
                bool record_reads, const Where& at) {
    for (uintptr_t w = off / 4; w <= (off + size - 1) / 4; ++w) {
        unsigned lo = w * 4 > off ? 0 : (unsigned)(off - w * 4);
        unsigned hi = (w + 1) * 4 < off + size ? 4 : (unsigned)(off + size - w * 4);
        uint8_t mask = (uint8_t)(((1u << hi) - 1) & ~((1u << lo) - 1));
        shadow_word(cells[w], current_access(kind, pc, line, mask), shared, record_reads, at);
    }
}

void report_access(int kind, const Where& at, int access, uint32_t pc, int line) {
    count(kind);
    // An access outside every array is the error to fix first, whatever was found before it (an
    // index one past a row is also a race with the block that owns the next row).
    bool outranks = kind == MINIBN_MEMCHECK && L->rep->kind != MINIBN_MEMCHECK;
    if (!first_error() && !outranks) return;
    memset(L->rep->message, 0, sizeof(L->rep->message));
    L->rep->other_valid = 0;
    minibn_report* r = L->rep;
    r->kind = kind;
    r->access = access;
    r->region = at.region;
    r->buffer = at.buffer;
    r->offset = at.offset;
    r->size = (int32_t)at.size;
    r->thread = L->current;
    r->block = L->block;
    r->pc = pc;
    r->line = line;
}

[[noreturn]] void out_of_bounds(const Where& at, int access, uint32_t pc, int line) {
    report_access(MINIBN_MEMCHECK, at, access, pc, line);
    abandon_fiber();
    __builtin_unreachable();
}

// ---- classifying an access ----------------------------------------------------------------------

void shared_access(uintptr_t a, unsigned size, int kind, uint32_t pc, int line) {
    uintptr_t s_lo = (uintptr_t)__start_minibn_shared;
    bool dynamic = !(a >= s_lo && a < (uintptr_t)__stop_minibn_shared);
    Where at;
    at.size = size;
    uintptr_t off;
    if (dynamic) {
        at.region = MINIBN_SHARED_DYNAMIC;
        at.buffer = -1;
        at.offset = (int64_t)(a - (uintptr_t)minibn_dynamic_smem);
        if (a + size > (uintptr_t)minibn_dynamic_smem + L->dynamic_bytes) out_of_bounds(at, kind, pc, line);
        off = L->static_bytes + (uintptr_t)at.offset;
    } else {
        at.region = MINIBN_SHARED_STATIC;
        at.offset = (int64_t)(a - s_lo);
        at.buffer = -1;
        for (int i = 0; i < L->nshared; ++i) {
            const minibn_shared_var& v = L->shared_vars[i];
            if ((uint64_t)at.offset >= v.offset && (uint64_t)at.offset < v.offset + v.size) {
                at.buffer = i;
                if ((uint64_t)at.offset + size > v.offset + v.size) out_of_bounds(at, kind, pc, line);
                break;
            }
        }
        if (L->nshared && at.buffer < 0) out_of_bounds(at, kind, pc, line);  // between variables
        off = (uintptr_t)at.offset;
    }
    if (kind != MINIBN_WRITE) {
        for (unsigned i = 0; i < size; ++i) {
            if (L->sstamp[off + i] != L->block + 1) {
                report_access(MINIBN_INITCHECK, at, kind, pc, line);
                break;
            }
        }
    }
    if (kind != MINIBN_READ)
        for (unsigned i = 0; i < size; ++i) L->sstamp[off + i] = L->block + 1;
    race_words(L->scells, off, size, kind, pc, line, true, true, at);
}

void global_access(int b, uintptr_t a, unsigned size, int kind, uint32_t pc, int line) {
    const minibn_buffer& buf = L->buffers[b];
    Where at{MINIBN_GLOBAL, b, (int64_t)(a - buf.base), size};
    if (a + size > buf.base + buf.nbytes) out_of_bounds(at, kind, pc, line);
    uintptr_t off = a - buf.base;
    if (buf.init) {
        if (kind != MINIBN_WRITE) {
            for (unsigned i = 0; i < size; ++i) {
                if (!buf.init[off + i]) {
                    report_access(MINIBN_INITCHECK, at, kind, pc, line);
                    break;
                }
            }
        }
        if (kind != MINIBN_READ) memset(buf.init + off, 1, size);
    }
    if (kind == MINIBN_WRITE) self().wrote_since_fence = true;
    if (!L->gcells[b]) {
        L->gcells[b] = (Cell*)calloc((buf.nbytes + 3) / 4, sizeof(Cell));
        if (!L->gcells[b]) { fail_msg(MINIBN_LAUNCH, "out of memory for the sanitizer's shadow"); abandon_fiber(); }
    }
    race_words(L->gcells[b], off, size, kind, pc, line, false, !buf.is_const || kind != MINIBN_READ, at);
}

// An address inside no array: name the array it is nearest to (a red zone is exact).
[[noreturn]] void wild_access(uintptr_t a, unsigned size, int kind, uint32_t pc, int line) {
    int best = -1;
    uint64_t best_dist = ~0ull;
    for (int i = 0; i < L->nbuffers; ++i) {
        const minibn_buffer& b = L->buffers[i];
        uint64_t dist;
        if (b.lo < b.hi && a >= b.lo && a < b.hi) dist = 0;
        else if (a < b.base) dist = b.base - a;
        else dist = a - (b.base + b.nbytes) + 1;
        if (dist < best_dist) { best_dist = dist; best = i; }
    }
    Where at{MINIBN_GLOBAL, best, best >= 0 ? (int64_t)(a - L->buffers[best].base) : (int64_t)a, size};
    out_of_bounds(at, kind, pc, line);
}

void on_access(void* addr, unsigned size, int kind, void* ra) {
    if (!L || !L->sanitize || L->failed) return;
    uintptr_t a = (uintptr_t)addr;
    char* stack = L->stacks + (size_t)L->current * L->stack_size;
    if (a >= (uintptr_t)stack && a < (uintptr_t)(stack + L->stack_size)) return;  // locals
    if (a >= (uintptr_t)__start_minibn_shared && a < (uintptr_t)__stop_minibn_shared) {
        shared_access(a, size, kind, code_offset(ra), 0);
        return;
    }
    uintptr_t d = (uintptr_t)minibn_dynamic_smem;
    if (d && a >= d && a < d + L->dynamic_bytes + 64 * 1024) {  // the guard zone counts too
        shared_access(a, size, kind, code_offset(ra), 0);
        return;
    }
    if (a >= image.lo && a < image.hi) return;  // threadIdx, constants, the shim's own state
    for (int i = 0; i < L->nbuffers; ++i) {
        const minibn_buffer& b = L->buffers[i];
        if (a >= b.base && a < b.base + b.nbytes) {
            global_access(i, a, size, kind, code_offset(ra), 0);
            return;
        }
    }
    wild_access(a, size, kind, code_offset(ra), 0);
}

// ---- synchronization points ---------------------------------------------------------------------

void warp_sync_clocks(unsigned base, unsigned mask) {
    if (!L->sanitize) return;
    uint32_t join[32] = {0};
    for (unsigned k = 0; k < 32; ++k) {
        if (!(mask & (1u << k)) || base + k >= L->nthreads) continue;
        uint32_t* v = vc_of(base + k);
        for (int j = 0; j < 32; ++j) if (v[j] > join[j]) join[j] = v[j];
    }
    for (unsigned k = 0; k < 32; ++k) {
        if (!(mask & (1u << k)) || base + k >= L->nthreads) continue;
        uint32_t* v = vc_of(base + k);
        memcpy(v, join, sizeof(join));
        v[k]++;
    }
}

void block_sync_knowledge() {
    if (!L->sanitize) return;
    for (unsigned t = 0; t < L->nthreads; ++t) {
        Thread& th = L->threads[t];
        for (const Know& k : th.known) {
            uint32_t& c = L->block_known[k.who];
            if (k.clock > c) c = k.clock;
        }
        th.known.clear();
    }
}

void check_mask(unsigned mask, int op, const char* file, int line) {
    unsigned me = L->current, lane = me % 32, base = me - lane;
    if (!(mask & (1u << lane))) {
        fail_msg(MINIBN_SYNCCHECK,
                 "%s at %s:%d in thread %u (lane %u of warp %u) of block (%u,%u,%u): its mask 0x%08x "
                 "does not include the calling lane; a lane must name itself in the mask it passes",
                 op_name(op), file, line, me, lane, me / 32, blockIdx.x, blockIdx.y, blockIdx.z, mask);
        abandon_fiber();
    }
    unsigned lanes = lanes_of_warp(base);
    if (L->sanitize && lanes < 32 && (mask >> lanes)) {
        unsigned first = lanes, last = 31;
        while (!(mask & (1u << last))) --last;
        fail_msg(MINIBN_SYNCCHECK,
                 "%s at %s:%d, thread %u of block (%u,%u,%u): the mask 0x%08x names lanes %u-%u of warp "
                 "%u, which do not exist (a block of %u threads leaves its last warp %u lanes). Pass only "
                 "the lanes that exist: __activemask() at the top of the kernel, or ((1u << %u) - 1) for "
                 "this warp; or make blockDim.x a multiple of 32.",
                 op_name(op), file, line, me, blockIdx.x, blockIdx.y, blockIdx.z, mask, first, last, me / 32,
                 L->nthreads, lanes, lanes);
        abandon_fiber();
    }
}

void wait_warp(unsigned mask, int op, const char* file, int line) {
    Thread& th = self();
    th.state = AT_WARP;
    th.warp_mask = mask;
    th.warp_op = op;
    th.file = file;
    th.line = line;
    yield();
}

uint64_t poison64() { return ~0ull; }

}  // namespace

// ---- the runtime's entry points -----------------------------------------------------------------

extern "C" {

int minibn_rt_lane(void) { return (int)(L->current % 32); }

void minibn_rt_syncthreads(const char* file, int line) {
    Thread& th = self();
    th.state = AT_SYNC;
    th.syncs++;
    th.file = file;
    th.line = line;
    yield();
}

void minibn_rt_syncwarp(unsigned mask, const char* file, int line) {
    check_mask(mask, MINIBN_OP_SYNCWARP, file, line);
    wait_warp(mask, MINIBN_OP_SYNCWARP, file, line);
}

// Lane exchange through per-thread slots: write, wait for the warp, read, wait again (so that no
// lane overwrites its slot with the next shuffle's value before every lane has read this one).
uint64_t minibn_rt_shfl(unsigned mask, uint64_t raw, int src_lane, int op, const char* file, int line) {
    check_mask(mask, op, file, line);
    unsigned me = L->current, base = me - me % 32;
    L->slots[me] = raw;
    wait_warp(mask, op, file, line);
    uint64_t out = raw;
    unsigned src = base + (unsigned)src_lane;
    if (src_lane >= 0 && src_lane < 32 && src < L->nthreads && (mask & (1u << src_lane))) {
        out = L->slots[src];
    } else if (L->sanitize && src_lane != (int)(me % 32)) {
        // CUDA leaves a value read from a lane outside the mask undefined: make it visibly so.
        out = poison64();
    }
    wait_warp(mask, op, file, line);
    return out;
}

unsigned minibn_rt_vote(unsigned mask, int pred, int op, const char* file, int line) {
    check_mask(mask, op, file, line);
    unsigned me = L->current, base = me - me % 32;
    L->slots[me] = pred ? 1 : 0;
    wait_warp(mask, op, file, line);
    unsigned bits = 0;
    for (unsigned k = 0; k < 32; ++k)
        if ((mask & (1u << k)) && base + k < L->nthreads && L->slots[base + k]) bits |= 1u << k;
    wait_warp(mask, op, file, line);
    if (op == MINIBN_OP_ALL) return bits == (mask & (lanes_of_warp(base) >= 32 ? ~0u : (1u << lanes_of_warp(base)) - 1));
    if (op == MINIBN_OP_ANY) return bits != 0;
    return bits;
}

unsigned minibn_rt_activemask(const char* file, int line) {
    Thread& th = self();
    th.state = AT_ACTIVEMASK;
    th.file = file;
    th.line = line;
    yield();
    return th.result;
}

void minibn_rt_fence(const char* file, int line) {
    (void)file;
    (void)line;
    if (!L->sanitize) return;
    Thread& th = self();
    for (const Know& k : th.pending) merge(th.known, k.who, k.clock);
    th.pending.clear();
    th.fences++;
    th.wrote_since_fence = false;
}

void minibn_rt_atomic(void* p, unsigned size, void* call_site) {
    if (!L->sanitize || L->failed) return;
    uint32_t pc = code_offset(call_site);
    uintptr_t a = (uintptr_t)p;
    char* stack = L->stacks + (size_t)L->current * L->stack_size;
    if (a >= (uintptr_t)stack && a < (uintptr_t)(stack + L->stack_size)) return;
    uintptr_t d = (uintptr_t)minibn_dynamic_smem;
    if ((a >= (uintptr_t)__start_minibn_shared && a < (uintptr_t)__stop_minibn_shared) ||
        (d && a >= d && a < d + L->dynamic_bytes + 64 * 1024)) {
        shared_access(a, size, MINIBN_ATOMIC, pc, 0);
        return;
    }
    for (int i = 0; i < L->nbuffers; ++i) {
        const minibn_buffer& b = L->buffers[i];
        if (a >= b.base && a < b.base + b.nbytes) {
            global_access(i, a, size, MINIBN_ATOMIC, pc, 0);
            // The atomic reads the word's value: acquire what every earlier release on it
            // published (it becomes usable at this thread's next fence). Then it writes: release
            // this thread's writes made before its last fence, and what that fence acquired.
            Thread& th = self();
            std::vector<Know>& rel = L->releases[a & ~(uintptr_t)3];
            for (const Know& k : rel) merge(th.pending, k.who, k.clock);
            if (th.wrote_since_fence) L->unfenced[who(L->block, L->current)] = true;
            if (th.fences) {
                merge(rel, who(L->block, L->current), th.fences);
                for (const Know& k : th.known) merge(rel, k.who, k.clock);
                for (const auto& kv : L->block_known) merge(rel, kv.first, kv.second);
            }
            return;
        }
    }
    if (a >= image.lo && a < image.hi) return;
    wild_access(a, size, MINIBN_ATOMIC, pc, 0);
}

// ThreadSanitizer's instrumentation calls, defined here instead of by its runtime.
#define MINIBN_HOOK(n)                                                                             \
    MINIBN_HIDDEN void __tsan_read##n(void* p) { on_access(p, n, MINIBN_READ, __builtin_return_address(0)); } \
    MINIBN_HIDDEN void __tsan_write##n(void* p) { on_access(p, n, MINIBN_WRITE, __builtin_return_address(0)); } \
    MINIBN_HIDDEN void __tsan_unaligned_read##n(void* p) { on_access(p, n, MINIBN_READ, __builtin_return_address(0)); } \
    MINIBN_HIDDEN void __tsan_unaligned_write##n(void* p) { on_access(p, n, MINIBN_WRITE, __builtin_return_address(0)); }
MINIBN_HOOK(1)
MINIBN_HOOK(2)
MINIBN_HOOK(4)
MINIBN_HOOK(8)
MINIBN_HOOK(16)
#undef MINIBN_HOOK
MINIBN_HIDDEN void __tsan_read_range(void* p, unsigned long n) {
    on_access(p, (unsigned)n, MINIBN_READ, __builtin_return_address(0));
}
MINIBN_HIDDEN void __tsan_write_range(void* p, unsigned long n) {
    on_access(p, (unsigned)n, MINIBN_WRITE, __builtin_return_address(0));
}
MINIBN_HIDDEN void __tsan_func_entry(void*) {}
MINIBN_HIDDEN void __tsan_func_exit(void) {}
MINIBN_HIDDEN void __tsan_init(void) {}

void minibn_abi_sizes(uint64_t* out) {
    out[0] = sizeof(minibn_buffer);
    out[1] = sizeof(minibn_shared_var);
    out[2] = sizeof(minibn_report);
    out[3] = sizeof(minibn_launch_args);
}

}  // extern "C"

// ---- the scheduler ------------------------------------------------------------------------------
namespace {

const char* state_name(State s) {
    switch (s) {
        case RUNNABLE: return "running";
        case AT_SYNC: return "waiting at __syncthreads()";
        case AT_WARP: return "waiting at a warp collective";
        case AT_ACTIVEMASK: return "at __activemask()";
        default: return "exited";
    }
}

// Open every warp collective whose named lanes have all arrived. Returns true if one opened.
bool release_warps() {
    bool released = false;
    for (unsigned base = 0; base < L->nthreads; base += 32) {
        unsigned lanes = lanes_of_warp(base);
        for (unsigned l = 0; l < lanes; ++l) {
            Thread& t = L->threads[base + l];
            if (t.state != AT_WARP) continue;
            bool ready = true;
            for (unsigned k = 0; k < lanes && ready; ++k) {
                if (!(t.warp_mask & (1u << k))) continue;
                Thread& o = L->threads[base + k];
                if (o.state == DONE) {
                    fail_msg(MINIBN_SYNCCHECK,
                             "thread %u waits at %s (%s:%d) whose mask 0x%08x names lane %u (thread "
                             "%u), which has already exited; every lane named in the mask must reach "
                             "the same collective (keep shuffles out of branches some lanes skip)",
                             base + l, op_name(t.warp_op), t.file, t.line, t.warp_mask, k, base + k);
                    return false;
                }
                ready = o.state == AT_WARP && o.warp_mask == t.warp_mask;
                if (ready && L->sanitize && o.warp_op != t.warp_op) {
                    fail_msg(MINIBN_SYNCCHECK,
                             "lanes of warp %u meet at different collectives with the same mask 0x%08x: "
                             "thread %u at %s (%s:%d), thread %u at %s (%s:%d)",
                             base / 32, t.warp_mask, base + l, op_name(t.warp_op), t.file, t.line, base + k,
                             op_name(o.warp_op), o.file, o.line);
                    return false;
                }
            }
            if (!ready) continue;
            for (unsigned k = 0; k < lanes; ++k)
                if (t.warp_mask & (1u << k)) L->threads[base + k].state = RUNNABLE;
            warp_sync_clocks(base, t.warp_mask);
            released = true;
        }
    }
    return released;
}

// When no lane of a warp can run and no collective of it can open, the lanes waiting at one
// __activemask() line are the lanes that arrived there together: that is its answer.
bool release_activemask() {
    bool released = false;
    for (unsigned base = 0; base < L->nthreads; base += 32) {
        unsigned lanes = lanes_of_warp(base);
        for (unsigned l = 0; l < lanes; ++l) {
            Thread& t = L->threads[base + l];
            if (t.state != AT_ACTIVEMASK) continue;
            unsigned mask = 0;
            for (unsigned k = l; k < lanes; ++k) {
                Thread& o = L->threads[base + k];
                if (o.state == AT_ACTIVEMASK && o.line == t.line && strcmp(o.file, t.file) == 0) mask |= 1u << k;
            }
            for (unsigned k = l; k < lanes; ++k) {
                if (!(mask & (1u << k))) continue;
                L->threads[base + k].state = RUNNABLE;
                L->threads[base + k].result = mask;
            }
            released = true;
        }
    }
    return released;
}

void describe_deadlock(const uint3& b) {
    // A lane waiting at a collective whose mask names a lane that waits elsewhere is the usual
    // cause: name that pair.
    for (unsigned t = 0; t < L->nthreads; ++t) {
        Thread& th = L->threads[t];
        if (th.state != AT_WARP) continue;
        unsigned base = t - t % 32;
        for (unsigned k = 0; k < lanes_of_warp(base); ++k) {
            if (!(th.warp_mask & (1u << k))) continue;
            Thread& o = L->threads[base + k];
            if (o.state == AT_WARP && o.warp_mask == th.warp_mask) continue;
            const char* where = o.state == AT_WARP ? op_name(o.warp_op) : state_name(o.state);
            fail_msg(MINIBN_SYNCCHECK,
                     "deadlock in block (%u,%u,%u): thread %u waits at %s (%s:%d) with mask 0x%08x, but "
                     "lane %u of its warp (thread %u) is %s%s (%s:%d)%s; every lane named in the mask "
                     "must reach the same collective with the same mask",
                     b.x, b.y, b.z, t, op_name(th.warp_op), th.file, th.line, th.warp_mask, k, base + k,
                     o.state == AT_WARP ? "waiting at " : "", where, o.file ? o.file : "?", o.line,
                     o.state == AT_WARP ? " with a different mask" : "");
            return;
        }
    }
    char buf[400];
    int n = 0;
    for (unsigned i = 0; i < L->nthreads && n < (int)sizeof(buf) - 80; ++i) {
        if (i > 0 && L->threads[i].state == L->threads[i - 1].state) continue;
        n += snprintf(buf + n, sizeof(buf) - n, "%sthread %u %s", n ? "; " : "", i,
                      state_name(L->threads[i].state));
    }
    fail_msg(MINIBN_LAUNCH, "deadlock in block (%u,%u,%u): no thread can continue (%s)", b.x, b.y, b.z, buf);
}

bool same_barrier_line(const uint3& b) {
    if (!L->sanitize) return true;
    int line = L->threads[0].line;
    const char* file = L->threads[0].file;
    for (unsigned t = 1; t < L->nthreads; ++t) {
        if (L->threads[t].line != line || strcmp(L->threads[t].file, file) != 0) {
            fail_msg(MINIBN_SYNCCHECK,
                     "divergent __syncthreads() in block (%u,%u,%u): thread 0 waits at the one at %s:%d, "
                     "thread %u at the one at %s:%d; all threads of a block must meet at the same "
                     "__syncthreads() (take it out of the if/else, or make the condition the same for "
                     "the whole block)",
                     b.x, b.y, b.z, L->threads[0].file, line, t, L->threads[t].file, L->threads[t].line);
            return false;
        }
    }
    return true;
}

void start_block(const uint3& b) {
    for (unsigned t = 0; t < L->nthreads; ++t) {
        Thread& th = L->threads[t];
        th.state = RUNNABLE;
        th.syncs = 0;
        th.line = 0;
        th.file = "?";
        th.fences = 0;
        th.wrote_since_fence = false;
        th.known.clear();
        th.pending.clear();
        th.idx = {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
        getcontext(&th.ctx);
        th.ctx.uc_stack.ss_sp = L->stacks + (size_t)t * L->stack_size;
        th.ctx.uc_stack.ss_size = L->stack_size;
        th.ctx.uc_link = &L->sched;
        makecontext(&th.ctx, fiber_entry, 0);
    }
    if (L->sanitize) {
        for (unsigned t = 0; t < L->nthreads; ++t) {
            memset(vc_of(t), 0, 32 * sizeof(uint32_t));
            vc_of(t)[t % 32] = 1;  // stamps start at 1: a lane knows nothing of the others yet
        }
        L->block_known.clear();
    }
    (void)b;
}

void run_block(const uint3& b, const unsigned* perm) {
    start_block(b);
    for (;;) {
        for (unsigned k = 0; k < L->nthreads && !L->failed; ++k)
            if (L->threads[perm[k]].state == RUNNABLE) run(perm[k]);
        if (L->failed) return;
        if (release_warps()) continue;
        if (L->failed) return;
        if (release_activemask()) continue;
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
            fail_msg(MINIBN_SYNCCHECK,
                     "divergent __syncthreads() in block (%u,%u,%u): thread %u exited after %u "
                     "barrier(s) while thread %u waits at barrier %u (%s:%d); every thread of a block "
                     "must reach every __syncthreads() (an early `return` before one is the usual cause)",
                     b.x, b.y, b.z, done_id, L->threads[done_id].syncs, sync_id,
                     L->threads[sync_id].syncs, L->threads[sync_id].file, L->threads[sync_id].line);
            return;
        }
        if (at_sync == live) {
            if (!same_barrier_line(b)) return;
            for (unsigned t = 0; t < L->nthreads; ++t) L->threads[t].state = RUNNABLE;
            block_sync_knowledge();
            continue;
        }
        describe_deadlock(b);
        return;
    }
    for (unsigned t = 1; t < L->nthreads; ++t) {
        if (L->threads[t].syncs != L->threads[0].syncs) {
            fail_msg(MINIBN_SYNCCHECK,
                     "divergent __syncthreads() in block (%u,%u,%u): thread %u passed %u barrier(s), "
                     "thread 0 passed %u; every thread of a block must reach every __syncthreads()",
                     b.x, b.y, b.z, t, L->threads[t].syncs, L->threads[0].syncs);
            return;
        }
    }
}

// A thread that never reaches a barrier cannot be preempted by the scheduler, so a kernel that
// spins on a value another block writes (blocks run one after another here) would hang. A CPU-time
// timer on this OS thread interrupts it and jumps back to the launch, which reports the timeout.
sigjmp_buf watchdog_jump;
void on_watchdog(int) { siglongjmp(watchdog_jump, 1); }

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

int find_image(struct dl_phdr_info* info, size_t, void* data) {
    uintptr_t probe = (uintptr_t)data;
    uintptr_t lo = ~(uintptr_t)0, hi = 0;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const auto& ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_LOAD) continue;
        uintptr_t s = info->dlpi_addr + ph.p_vaddr, e = s + ph.p_memsz;
        if (s < lo) lo = s;
        if (e > hi) hi = e;
    }
    if (probe >= lo && probe < hi) {
        image = {(uintptr_t)info->dlpi_addr, hi};
        return 1;
    }
    return 0;
}

}  // namespace

extern "C" int minibn_rt_launch(void (*body)(void**), const minibn_launch_args* a) {
    if (!image.hi) dl_iterate_phdr(find_image, (void*)&find_image);
    Launch state{};
    L = &state;
    L->body = body;
    L->args = a->args;
    L->rep = a->report;
    memset(L->rep, 0, sizeof(*L->rep));
    L->sanitize = a->sanitize != 0;
    L->buffers = a->buffers;
    L->nbuffers = a->nbuffers;
    L->shared_vars = a->shared_vars;
    L->nshared = a->nshared;
    L->gcells.assign((size_t)a->nbuffers, nullptr);
    gridDim = {a->grid[0], a->grid[1], a->grid[2]};
    blockDim = {a->block[0], a->block[1], a->block[2]};
    unsigned nthreads = a->block[0] * a->block[1] * a->block[2];
    unsigned nblocks = a->grid[0] * a->grid[1] * a->grid[2];
    size_t shared_mem = a->shared_mem;
    L->nthreads = nthreads;
    L->nblocks = nblocks;
    L->stack_size = 64 * 1024;
    L->static_bytes = (size_t)(__stop_minibn_shared - __start_minibn_shared);
    L->dynamic_bytes = shared_mem;
    L->threads = new (std::nothrow) Thread[nthreads];
    L->stacks = (char*)malloc(nthreads * L->stack_size);
    L->slots = (uint64_t*)calloc(nthreads, sizeof(uint64_t));
    // Dynamic shared memory gets a guard zone behind it: a kernel that writes past shared_mem
    // is stopped with an error instead of corrupting the heap (on a GPU: an illegal address).
    const size_t guard = 64 * 1024;
    unsigned char* dyn = (unsigned char*)malloc(shared_mem + guard);
    unsigned* tperm = (unsigned*)malloc(nthreads * sizeof(unsigned));
    unsigned* bperm = (unsigned*)malloc(nblocks * sizeof(unsigned));
    size_t shared_total = L->static_bytes + shared_mem;
    if (L->sanitize) {
        L->vc = (uint32_t*)calloc((size_t)nthreads * 32, sizeof(uint32_t));
        L->scells = (Cell*)calloc(shared_total / 4 + 2, sizeof(Cell));
        L->sstamp = (uint32_t*)calloc(shared_total + 8, sizeof(uint32_t));
    }
    if (!L->threads || !L->stacks || !L->slots || !dyn || !tperm || !bperm ||
        (L->sanitize && (!L->vc || !L->scells || !L->sstamp))) {
        fail_msg(MINIBN_LAUNCH, "out of memory for %u threads per block", nthreads);
    } else {
        minibn_dynamic_smem = dyn;
        make_order(bperm, nblocks, a->order, a->seed ^ 0xB10C);
        Watchdog watchdog;
        volatile unsigned k = 0;  // survives the jump back from the watchdog
        if (sigsetjmp(watchdog_jump, 1)) {
            fail_msg(MINIBN_LAUNCH,
                     "block (%u,%u,%u) still running after %.3g s of CPU time: a thread loops without "
                     "end, or spins waiting for a value another block writes (here blocks run one "
                     "after another, so a block never sees a later block's writes)",
                     blockIdx.x, blockIdx.y, blockIdx.z, a->timeout_s);
            k = nblocks;
        } else {
            watchdog.arm(a->timeout_s);
        }
        while (k < nblocks && !L->failed) {
            unsigned id = bperm[k];
            L->block = id;
            blockIdx = {id % a->grid[0], (id / a->grid[0]) % a->grid[1], id / (a->grid[0] * a->grid[1])};
            if (L->static_bytes) memset(__start_minibn_shared, 0xFF, L->static_bytes);
            memset(dyn, 0xFF, shared_mem + guard);
            make_order(tperm, nthreads, a->order, a->seed + id);
            run_block(blockIdx, tperm);
            k = k + 1;
            if (L->sanitize) continue;  // accesses past the end were caught as they happened
            for (size_t i = shared_mem; i < shared_mem + guard && !L->failed; ++i) {
                if (dyn[i] != 0xFF) {
                    fail_msg(MINIBN_MEMCHECK,
                             "block (%u,%u,%u) wrote byte %zu of dynamic shared memory, past the end of "
                             "it (the launch gave shared_mem=%zu bytes)",
                             blockIdx.x, blockIdx.y, blockIdx.z, i, shared_mem);
                }
            }
        }
    }
    for (Cell* c : L->gcells) free(c);
    delete[] L->threads;
    free(L->stacks); free(L->slots); free(dyn); free(tperm); free(bperm);
    free(L->vc); free(L->scells); free(L->sstamp);
    minibn_dynamic_smem = nullptr;
    int kind = L->rep->kind;
    // Errors that do not stop a launch (races, uninitialized reads) still fail it.
    L = nullptr;
    return kind == MINIBN_OK ? 0 : 1;
}
