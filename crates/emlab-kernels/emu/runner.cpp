// The host side of emlab's CUDA emulator: reads one launch from stdin, runs it on the CPU and
// writes the output buffers to stdout (the protocol is emlab_kernels::emu's, below). Built by
// emlab_kernels::emu with the kernels' sources (rewritten as emu/cuda_emu.h explains) included.
//
// Memory checking: every buffer ends at an inaccessible page (any access past the end faults and
// is reported with the kernel, block, thread, buffer and offset) and starts after a poisoned zone
// (bytes 0xC1 0xFF repeated: NaN as f32 and as bf16, a huge u32; compared after the launch).
// Output buffers start poisoned too, so an element a kernel forgets to write reads back as NaN.
// After the launch every read-only buffer is compared with its input. Dynamic shared memory is
// laid out the same way, exactly shared_mem_bytes long, and poisoned before each block.
//
// Exit status: 0 and the outputs on stdout; 2 a launch or kernel error (message on stderr);
// 3 a block that never finished (a deadlock); 4 a crash (an access past the guard zones).
#include "cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <functional>
#include <thread>
#include <tuple>
#include <vector>

// The kernels (the rewritten src/*.cu) and EMU_KERNEL_LIST(X), one X(name) per kernel.
#include "emu_kernels.inc"

namespace emu {

static std::mutex g_err_m;
static std::string g_err;
static std::atomic<bool> g_failed{false};
static std::string g_kernel;
static std::string g_block;  // the running block, for messages

void fail(const std::string& msg) {
    std::lock_guard<std::mutex> lk(g_err_m);
    if (!g_failed.exchange(true)) g_err = msg + " (thread " + std::to_string(threadIdx.x) + "," + std::to_string(threadIdx.y) + "," + std::to_string(threadIdx.z) + ")";
}

[[noreturn]] static void die(int code, const std::string& msg) {
    std::string m = g_kernel.empty() ? msg : g_kernel + ": " + msg;
    m += "\n";
    (void)!write(2, m.data(), m.size());
    std::fflush(stdout);
    _exit(code);
}

// ---------------------------------------------------------------------------------------------
// Guarded memory

constexpr size_t GUARD = 64 * 1024;
static size_t page_size() { return (size_t)sysconf(_SC_PAGESIZE); }

static void poison(uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (i & 1) ? 0xFF : 0xC1;
}
static size_t first_unpoisoned(const uint8_t* p, size_t n, size_t phase) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (((i + phase) & 1) ? 0xFF : 0xC1)) return i;
    return n;
}

// A buffer ends exactly at an inaccessible page, so any access past its end (read or write, by
// one byte or many) faults at once and is reported with the buffer and the offset; a kernel
// that reads past the end and writes the value back would slip past a poison compare (the NaN
// it copies is the poison). Before the start: a poisoned zone (reads give NaN, writes are found
// by the compare after the launch), then an inaccessible page.
struct Region {
    std::string name;
    uint8_t* map = nullptr;  // whole mapping, inaccessible pages included
    size_t map_len = 0;
    uint8_t* data = nullptr;
    size_t len = 0;
    size_t before = 0;  // poisoned bytes before the data (at least GUARD)
    void alloc(const std::string& n, size_t bytes) {
        name = n;
        len = bytes;
        const size_t pg = page_size();
        const size_t body = (GUARD + bytes + pg - 1) / pg * pg;
        map_len = pg + body + pg;
        void* m = mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) die(2, "cannot map " + std::to_string(map_len) + " bytes for buffer '" + n + "'");
        map = (uint8_t*)m;
        mprotect(map, pg, PROT_NONE);
        mprotect(map + pg + body, pg, PROT_NONE);
        before = body - bytes;
        data = map + pg + before;
        poison(map + pg, body);
    }
    // "" when the zone before the data holds the poison, else where it was written.
    std::string check() const {
        const size_t b = first_unpoisoned(data - before, before, 0);
        if (b < before) return "wrote before the start of buffer '" + name + "' (byte " + std::to_string((long)b - (long)before) + ")";
        return "";
    }
    bool contains(const void* p) const { return (const uint8_t*)p >= map && (const uint8_t*)p < map + map_len; }
};

static std::vector<Region*> g_regions;  // for the crash handler
static Region g_shared;
static size_t g_shared_bytes = 0;

void* dynamic_shared_base() { return g_shared.data; }

static void on_crash(int sig, siginfo_t* info, void* uc) {
    char buf[640];
    const void* a = info->si_addr;
    const char* kind = "access";
#if defined(__x86_64__) && defined(REG_ERR)
    kind = (((ucontext_t*)uc)->uc_mcontext.gregs[REG_ERR] & 2) ? "write" : "read";
#else
    (void)uc;
#endif
    for (Region* r : g_regions) {
        if (r->contains(a)) {
            const long off = (long)((const uint8_t*)a - r->data);
            snprintf(buf, sizeof buf, "%s: block %s thread (%u,%u,%u): out-of-bounds %s at byte %ld of buffer '%s' (%zu bytes)%s%s\n",
                     g_kernel.c_str(), g_block.c_str(), threadIdx.x, threadIdx.y, threadIdx.z, kind, off, r->name.c_str(), r->len,
                     r == &g_shared ? ": the launch's shared_mem_bytes is too small for the kernel" : "",
                     sig == SIGBUS ? " (bus error)" : "");
            (void)!write(2, buf, strlen(buf));
            _exit(4);
        }
    }
    snprintf(buf, sizeof buf, "%s: block %s thread (%u,%u,%u): signal %d (%s) at address %p, outside every buffer\n", g_kernel.c_str(),
             g_block.c_str(), threadIdx.x, threadIdx.y, threadIdx.z, sig, kind, a);
    (void)!write(2, buf, strlen(buf));
    _exit(4);
}

// ---------------------------------------------------------------------------------------------
// Launch description

enum Tag : uint8_t { T_I32 = 0, T_F32 = 1, T_U64 = 2, T_I64 = 3, T_F64 = 4, T_BUF = 5 };
enum Elem : uint8_t { E_F32 = 0, E_BF16 = 1, E_U32 = 2, E_U64 = 3, E_I64 = 4, E_F64 = 5, E_I32 = 6, E_U8 = 7 };
static const char* elem_name(uint8_t e) {
    static const char* n[] = {"f32", "bf16", "u32", "u64", "i64", "f64", "i32", "u8"};
    return e < 8 ? n[e] : "?";
}
enum Mode : uint8_t { M_IN = 0, M_INOUT = 1, M_OUT = 2, M_PTRS = 3 };

struct Arg {
    uint8_t tag;
    uint64_t bits;  // scalar bits, or the buffer index
};
struct Buf {
    Region r;
    uint8_t elem, mode;
    std::vector<uint8_t> input;                      // read-only buffers: to check they stay unchanged
    std::vector<std::pair<uint32_t, uint64_t>> ptrs;  // M_PTRS: (buffer, byte offset) per entry
};

static std::vector<uint8_t> g_in;
static size_t g_pos = 0;
template <typename T>
static T rd() {
    if (g_pos + sizeof(T) > g_in.size()) die(2, "truncated launch description");
    T v;
    std::memcpy(&v, g_in.data() + g_pos, sizeof(T));
    g_pos += sizeof(T);
    return v;
}
static std::string rd_str() {
    const uint32_t n = rd<uint32_t>();
    if (g_pos + n > g_in.size()) die(2, "truncated launch description");
    std::string s((const char*)g_in.data() + g_pos, n);
    g_pos += n;
    return s;
}

static std::vector<Buf> g_bufs;
static std::vector<Arg> g_args;

// ---------------------------------------------------------------------------------------------
// Kernel arguments: each parameter's C++ type decides what it accepts, so a launch that passes a
// scalar of the wrong width or a buffer of the wrong element type is an error, not garbage.

template <typename T> struct ElemOf { static constexpr int v = -1; };
template <> struct ElemOf<float> { static constexpr int v = E_F32; };
template <> struct ElemOf<__nv_bfloat16> { static constexpr int v = E_BF16; };
template <> struct ElemOf<uint32_t> { static constexpr int v = E_U32; };
template <> struct ElemOf<uint64_t> { static constexpr int v = E_U64; };
template <> struct ElemOf<int64_t> { static constexpr int v = E_I64; };
template <> struct ElemOf<double> { static constexpr int v = E_F64; };
template <> struct ElemOf<int32_t> { static constexpr int v = E_I32; };
template <> struct ElemOf<uint8_t> { static constexpr int v = E_U8; };

template <typename P>
static P convert(size_t i) {
    if (i >= g_args.size()) die(2, "too few arguments (" + std::to_string(g_args.size()) + ")");
    const Arg& a = g_args[i];
    const std::string at = "argument " + std::to_string(i);
    if constexpr (std::is_pointer_v<P>) {
        using E = std::remove_cv_t<std::remove_pointer_t<P>>;
        if (a.tag != T_BUF) die(2, at + " is a device pointer, got a scalar");
        Buf& b = g_bufs.at(a.bits);
        if (ElemOf<E>::v >= 0 && b.elem != ElemOf<E>::v)
            die(2, at + " points to " + elem_name((uint8_t)ElemOf<E>::v) + ", got buffer '" + b.r.name + "' of " + elem_name(b.elem));
        return reinterpret_cast<P>(b.r.data);
    } else if constexpr (std::is_same_v<P, int>) {
        if (a.tag != T_I32) die(2, at + " is an i32, got tag " + std::to_string(a.tag));
        int32_t v;
        std::memcpy(&v, &a.bits, 4);
        return v;
    } else if constexpr (std::is_same_v<P, float>) {
        if (a.tag != T_F32) die(2, at + " is an f32, got tag " + std::to_string(a.tag));
        float v;
        std::memcpy(&v, &a.bits, 4);
        return v;
    } else if constexpr (std::is_same_v<P, double>) {
        if (a.tag != T_F64) die(2, at + " is an f64, got tag " + std::to_string(a.tag));
        double v;
        std::memcpy(&v, &a.bits, 8);
        return v;
    } else if constexpr (std::is_same_v<P, unsigned long> || std::is_same_v<P, unsigned long long>) {
        if (a.tag != T_U64) die(2, at + " is a u64 (size_t), got tag " + std::to_string(a.tag));
        return (P)a.bits;
    } else if constexpr (std::is_same_v<P, long> || std::is_same_v<P, long long>) {
        if (a.tag != T_I64) die(2, at + " is an i64, got tag " + std::to_string(a.tag));
        return (P)a.bits;
    } else {
        static_assert(sizeof(P) == 0, "kernel parameter type not emulated");
    }
}

using Body = std::function<void()>;
template <typename... A, size_t... I>
static Body bind_args(void (*f)(A...), std::index_sequence<I...>) {
    if (g_args.size() != sizeof...(A)) die(2, "takes " + std::to_string(sizeof...(A)) + " arguments, the launch passes " + std::to_string(g_args.size()));
    auto t = std::make_tuple(convert<A>(I)...);
    return [f, t]() { std::apply(f, t); };
}
template <typename... A>
static Body bind_args(void (*f)(A...)) {
    return bind_args(f, std::index_sequence_for<A...>{});
}

#define EMU_ENTRY(name) {#name, [] { return bind_args(&name); }},
static const std::vector<std::pair<const char*, std::function<Body()>>> KERNELS = {EMU_KERNEL_LIST(EMU_ENTRY)};

// ---------------------------------------------------------------------------------------------
// Execution: a pool of blockDim threads runs each block in turn.

struct Pool {
    unsigned n = 0;
    Body body;
    Barrier block;
    std::vector<Warp> warps;
    std::atomic<unsigned> start{0}, done{0};
    std::vector<std::thread> threads;
    std::atomic<bool> quit{false};

    void worker(unsigned t, uint3 idx) {
        threadIdx = idx;
        ctx.block = &block;
        ctx.warp = &warps[t / 32];
        ctx.lane = t % 32;
        unsigned seen = 0;
        for (;;) {
            while (start.load(std::memory_order_acquire) == seen) start.wait(seen, std::memory_order_acquire);
            seen = start.load(std::memory_order_acquire);
            if (quit.load()) return;
            body();
            // Returning counts as arriving at every later barrier (an early return too).
            ctx.warp->bar.arrive_and_drop();
            block.arrive_and_drop();
            if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == n) done.notify_all();
        }
    }
    void run_block() {
        block.reset(n);
        for (unsigned w = 0; w < warps.size(); w++) warps[w].bar.reset(warps[w].size);
        done.store(0);
        start.fetch_add(1, std::memory_order_acq_rel);
        start.notify_all();
        for (unsigned d = done.load(std::memory_order_acquire); d != n; d = done.load(std::memory_order_acquire)) done.wait(d);
    }
};

static std::atomic<uint64_t> g_blocks_done{0};

static void watchdog(double limit_s) {
    uint64_t last = ~0ull;
    auto since = std::chrono::steady_clock::now();
    for (;;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        const uint64_t b = g_blocks_done.load();
        const auto now = std::chrono::steady_clock::now();
        if (b != last) {
            last = b;
            since = now;
        } else if (std::chrono::duration<double>(now - since).count() > limit_s) {
            die(3, "block " + g_block + " did not finish in " + std::to_string((int)limit_s) +
                       " s: threads wait at a barrier or shuffle that others never reach");
        }
    }
}

}  // namespace emu

using namespace emu;

int main(int argc, char** argv) {
    if (argc > 1 && std::string(argv[1]) == "--list") {
        for (auto& k : KERNELS) printf("%s\n", k.first);
        return 0;
    }
    struct sigaction sa {};
    sa.sa_sigaction = on_crash;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);

    if (const char* j = getenv("EMLAB_EMU_JITTER_US")) Barrier::jitter_us = (unsigned)atoi(j);
    // Read the whole description.
    {
        uint8_t chunk[1 << 16];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0) g_in.insert(g_in.end(), chunk, chunk + n);
    }
    if (rd<uint32_t>() != 0x31554d45u) die(2, "not an emulator launch description");
    g_kernel = rd_str();
    dim3 grid, block;
    grid.x = rd<uint32_t>(), grid.y = rd<uint32_t>(), grid.z = rd<uint32_t>();
    block.x = rd<uint32_t>(), block.y = rd<uint32_t>(), block.z = rd<uint32_t>();
    g_shared_bytes = rd<uint32_t>();
    const double hang_s = rd<double>();
    const uint32_t nbuf = rd<uint32_t>();
    g_bufs.resize(nbuf);
    for (uint32_t i = 0; i < nbuf; i++) {
        Buf& b = g_bufs[i];
        std::string name = rd_str();
        b.elem = rd<uint8_t>();
        b.mode = rd<uint8_t>();
        const uint64_t len = rd<uint64_t>();
        b.r.alloc(name, len);
        if (b.mode == M_IN || b.mode == M_INOUT) {
            if (g_pos + len > g_in.size()) die(2, "truncated buffer '" + name + "'");
            std::memcpy(b.r.data, g_in.data() + g_pos, len);
            if (b.mode == M_IN) b.input.assign(g_in.begin() + g_pos, g_in.begin() + g_pos + len);
            g_pos += len;
        } else if (b.mode == M_PTRS) {
            if (len % 8 != 0) die(2, "pointer table '" + name + "' of " + std::to_string(len) + " bytes");
            for (uint64_t e = 0; e < len / 8; e++) {
                const uint32_t to = rd<uint32_t>();
                const uint64_t off = rd<uint64_t>();
                b.ptrs.push_back({to, off});
            }
        }
    }
    for (Buf& b : g_bufs) {
        g_regions.push_back(&b.r);
        if (b.mode != M_PTRS) continue;
        for (size_t e = 0; e < b.ptrs.size(); e++) {
            const auto [to, off] = b.ptrs[e];
            if (to >= g_bufs.size() || g_bufs[to].mode == M_PTRS || off > g_bufs[to].r.len)
                die(2, "pointer table '" + b.r.name + "' entry " + std::to_string(e) + " points outside every buffer");
            const uint64_t addr = (uint64_t)(g_bufs[to].r.data + off);
            std::memcpy(b.r.data + 8 * e, &addr, 8);
        }
        b.input.assign(b.r.data, b.r.data + b.r.len);
    }
    const uint32_t nargs = rd<uint32_t>();
    for (uint32_t i = 0; i < nargs; i++) {
        Arg a;
        a.tag = rd<uint8_t>();
        a.bits = rd<uint64_t>();
        if (a.tag == T_BUF && a.bits >= g_bufs.size()) die(2, "argument " + std::to_string(i) + " names buffer " + std::to_string(a.bits) + " of " + std::to_string(g_bufs.size()));
        g_args.push_back(a);
    }

    // The launch's own checks, as the CUDA driver makes them.
    const uint64_t nthreads = (uint64_t)block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || block.z > 64)
        die(2, "invalid launch: block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," + std::to_string(block.z) + ") (at most 1024 threads, z <= 64)");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
        die(2, "invalid launch: grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," + std::to_string(grid.z) + ")");
    if (g_shared_bytes > 48 * 1024)
        die(2, "invalid launch: shared_mem_bytes " + std::to_string(g_shared_bytes) + " > 48 KiB needs cudaFuncAttributeMaxDynamicSharedMemorySize, which the launch does not set");
    Body body;
    for (auto& k : KERNELS)
        if (g_kernel == k.first) body = k.second();
    if (!body) die(2, "no such kernel in the emulator's list (emu/runner.cpp's build adds every extern \"C\" __global__ of src/*.cu)");

    g_shared.alloc("dynamic shared memory", g_shared_bytes);
    g_regions.push_back(&g_shared);
    gridDim = grid;
    blockDim = block;

    Pool pool;
    pool.n = (unsigned)nthreads;
    pool.body = body;
    pool.warps = std::vector<Warp>((nthreads + 31) / 32);
    for (unsigned w = 0; w < pool.warps.size(); w++) pool.warps[w].size = std::min<unsigned>(32, pool.n - 32 * w);
    for (unsigned t = 0; t < pool.n; t++) {
        const uint3 idx{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        pool.threads.emplace_back([&pool, t, idx] { pool.worker(t, idx); });
    }
    std::thread(watchdog, hang_s).detach();

    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = uint3{x, y, z};
                g_block = "(" + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + ")";
                poison(g_shared.data, g_shared.len);
                pool.run_block();
                g_blocks_done++;
                if (g_failed.load()) die(2, "block " + g_block + ": " + g_err);
                const std::string s = g_shared.check();
                if (!s.empty()) die(2, "block " + g_block + " " + s + ": shared_mem_bytes is " + std::to_string(g_shared_bytes));
            }
    pool.quit = true;
    pool.start.fetch_add(1);
    pool.start.notify_all();
    for (auto& t : pool.threads) t.join();

    for (Buf& b : g_bufs) {
        const std::string s = b.r.check();
        if (!s.empty()) die(2, s);
        if ((b.mode == M_IN || b.mode == M_PTRS) && std::memcmp(b.input.data(), b.r.data, b.r.len) != 0) {
            size_t i = 0;
            while (b.input[i] == b.r.data[i]) i++;
            die(2, "wrote read-only buffer '" + b.r.name + "' (first change at byte " + std::to_string(i) + ")");
        }
    }
    for (Buf& b : g_bufs)
        if (b.mode == M_INOUT || b.mode == M_OUT) fwrite(b.r.data, 1, b.r.len, stdout);
    fflush(stdout);
    return 0;
}
