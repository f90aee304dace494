"""Machine rates for the generation bounds in bench_generate.sh, measured in the same run.

    bench/.venv/bin/python bench/generate/machine_bounds.py [--threads 2]

Prints one JSON line:
- matmul_gflops: best of 5 f32 2048^3 `torch.mm` on `threads` threads (2 * 2048^3 FLOP each);
- int8_matmul_gops: the same for an int8 x int8 -> int32 2048^3 product (`torch._int_mm`,
  oneDNN: AVX-512 VNNI where the CPU has it), the bound for `--q8` batched decoding; absent
  where this torch build has no CPU `_int_mm`;
- bandwidth: a 1 GiB f32 array (far larger than any cache) copied with numpy (one thread;
  counted as bytes read + bytes written), copied with torch on `threads` threads (same count),
  and summed with torch on `threads` threads (bytes read only: the case of decode, which streams
  weights in and writes almost nothing). Best of 3 each, in GB/s (1e9 bytes).
"""
import argparse
import json
import time


def best(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    n = 2048
    x, y = torch.randn(n, n), torch.randn(n, n)
    torch.mm(x, y)  # warm-up
    t_mm = best(lambda: torch.mm(x, y), 5)
    int8 = {}
    try:
        xi = torch.randint(-127, 128, (n, n), dtype=torch.int8)
        yi = torch.randint(-127, 128, (n, n), dtype=torch.int8)
        torch._int_mm(xi, yi)  # warm-up
        int8["int8_matmul_gops"] = 2 * n**3 / best(lambda: torch._int_mm(xi, yi), 5) / 1e9
    except Exception as e:  # noqa: BLE001 - any failure only drops the int8 bound
        int8["int8_matmul_error"] = str(e)[:200]

    nbytes = 1 << 30
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    t_np = best(lambda: np.copyto(dst, src), 3)
    ts, td = torch.from_numpy(src), torch.from_numpy(dst)
    t_tc = best(lambda: td.copy_(ts), 3)
    t_ts = best(lambda: ts.sum(), 3)
    print(json.dumps({
        "impl": "machine", "bench": "bounds", "threads": a.threads, "torch": torch.__version__,
        "matmul_shape": [n, n, n], "matmul_gflops": 2 * n**3 / t_mm / 1e9,
        "numpy_copy_gbs": 2 * nbytes / t_np / 1e9, "torch_copy_gbs": 2 * nbytes / t_tc / 1e9,
        "torch_sum_read_gbs": nbytes / t_ts / 1e9, **int8,
    }), flush=True)


if __name__ == "__main__":
    main()
