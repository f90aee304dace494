"""PyTorch CPU baseline for the emlab TopK SAE training step (bench/sae/bench_sae.sh).

The same step as emlab's `Trainer::step` for Architecture::TopK: inputs scaled so
E||x||^2 = d (factor from the first batch), b_dec initialised to the first batch's
mean, W_dec rows unit-norm random, W_enc = W_dec^T, pre = (x - b_dec) W_enc + b_enc,
top-k + ReLU, x_hat = z W_dec + b_dec, loss = mean_i ||x_hat_i - x_i||^2 + AuxK on
dead latents (none are dead in a short benchmark, in either implementation),
decoder-gradient radial component removed, torch.optim.Adam (f32 state), decoder
rows renormalised after the step.

Two variants:
  dense  - the plain loop (SAELens' default TopK path: dense z, dense decoder matmul)
  sparse - the decoder as an embedding_bag over the k active rows (the best plain-
           PyTorch trick; the encoder and its gradients stay dense GEMMs)
"""
import argparse
import json
import time

import torch


def make_data(d, batch, pool, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(256, d, generator=g)
    which = torch.randint(0, 256, (pool * batch,), generator=g)
    return (centres[which] + torch.randn(pool * batch, d, generator=g)).view(pool, batch, d)


class TopKSAE:
    def __init__(self, d, m, k, lr, sparse, aux_k=None, aux_coef=1 / 32, dead_after=1_000_000):
        self.d, self.m, self.k, self.sparse = d, m, k, sparse
        w = torch.randn(m, d)
        w /= w.norm(dim=-1, keepdim=True)
        self.W_dec = w.clone().requires_grad_(True)
        self.W_enc = w.T.clone().contiguous().requires_grad_(True)
        self.b_enc = torch.zeros(m, requires_grad=True)
        self.b_dec = torch.zeros(d, requires_grad=True)
        self.opt = torch.optim.Adam([self.W_enc, self.b_enc, self.W_dec, self.b_dec], lr=lr, betas=(0.9, 0.999), eps=1e-8)
        self.scale = None
        self.aux_k = aux_k if aux_k is not None else d // 2
        self.aux_coef = aux_coef
        self.dead_after = dead_after
        self.since_fired = torch.zeros(m, dtype=torch.long)

    def step(self, x_raw):
        n = x_raw.shape[0]
        if self.scale is None:
            self.scale = (self.d / x_raw.pow(2).sum(-1).mean()).sqrt().item()
            with torch.no_grad():
                self.b_dec.copy_((x_raw * self.scale).mean(0))
        x = x_raw * self.scale
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        acts = vals.relu()
        if self.sparse:
            x_hat = torch.nn.functional.embedding_bag(idx, self.W_dec, per_sample_weights=acts, mode="sum") + self.b_dec
        else:
            z = torch.zeros_like(pre).scatter(-1, idx, acts)
            x_hat = z @ self.W_dec + self.b_dec
        mse = (x_hat - x).pow(2).sum(-1).mean()
        loss = mse
        dead = self.since_fired >= self.dead_after
        num_dead = int(dead.sum())
        if num_dead > 0 and self.aux_k > 0:
            k_aux = min(self.aux_k, num_dead)
            scale = min(num_dead / self.aux_k, 1.0)
            residual = (x - x_hat).detach()
            aux_pre = torch.where(dead[None], pre, torch.tensor(-torch.inf))
            av, ai = aux_pre.topk(k_aux, dim=-1, sorted=False)
            az = torch.zeros_like(pre).scatter(-1, ai, av.relu())
            loss = loss + self.aux_coef * scale * (az @ self.W_dec - residual).pow(2).sum(-1).mean()
        loss.backward()
        with torch.no_grad():
            g = self.W_dec.grad
            g -= (g * self.W_dec).sum(-1, keepdim=True) * self.W_dec
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True)
            fired = torch.zeros(self.m, dtype=torch.bool)
            fired[idx[acts > 0]] = True
            self.since_fired += n
            self.since_fired[fired] = 0
        return mse.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", choices=["dense", "sparse"], default="dense")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    pool = 4
    data = make_data(a.d, a.batch, pool)
    # matmul rate of this torch build on the encoder shape, for the compute bound
    A, B = torch.randn(1024, a.d), torch.randn(a.d, a.m)
    A @ B
    t = time.perf_counter()
    for _ in range(3):
        A @ B
    gemm = 2 * 1024 * a.d * a.m / ((time.perf_counter() - t) / 3) / 1e9
    del A, B
    sae = TopKSAE(a.d, a.m, a.k, lr=2e-4, sparse=a.variant == "sparse")
    for s in range(a.warmup):
        sae.step(data[s % pool])
    t = time.perf_counter()
    for s in range(a.steps):
        mse = sae.step(data[(s + a.warmup) % pool])
    secs = time.perf_counter() - t
    tok_s = a.steps * a.batch / secs
    dm = 2 * a.d * a.m
    # dense: encoder fwd, decoder fwd, dW_dec, dz, dW_enc, d(xc) (for b_dec): 6 GEMMs
    # sparse: encoder fwd, dW_enc, d(xc): 3 GEMMs (+ k-row decoder work)
    flops = (6 * dm if a.variant == "dense" else 3 * dm + 8 * a.k * a.d) + 10 * dm / a.batch
    res = {
        "impl": f"torch-{a.variant}", "torch": torch.__version__, "d": a.d, "m": a.m, "k": a.k,
        "batch": a.batch, "steps": a.steps, "threads": torch.get_num_threads(), "seconds": secs,
        "tokens_per_s": tok_s, "step_s": secs / a.steps, "flops_per_token": flops,
        "achieved_gflops": tok_s * flops / 1e9, "gemm_gflops_encoder_shape": gemm, "final_mse": mse,
    }
    if a.json:
        print(json.dumps(res))
    else:
        print(f"torch-{a.variant}: {tok_s:.0f} tokens/s ({secs / a.steps:.3f} s/step), {flops / 1e6:.1f} MFLOP/token, "
              f"gemm {gemm:.1f} GFLOP/s, last mse {mse:.4f}")


if __name__ == "__main__":
    main()
