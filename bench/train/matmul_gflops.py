"""Measured f32 GEMM rate of this machine (PyTorch, the fastest GEMM we have here): the compute bound
for training throughput is this rate divided by the FLOPs per trained token."""
import json
import sys
import time

import torch

n = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
a, b = torch.randn(n, n), torch.randn(n, n)
a @ b
best = 0.0
for _ in range(5):
    t = time.perf_counter()
    a @ b
    best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
print(json.dumps({"impl": "torch", "n": n, "threads": torch.get_num_threads(), "gflops": best}))
