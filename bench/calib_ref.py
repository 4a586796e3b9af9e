#!/usr/bin/env python3
"""calib_ref.py - the PyTorch reference of bench/calib.sh.

transformers' forward pass over the calibration tokens (fp32, the eager experts
path: one GEMM pair per expert over its routed tokens, as moepack does), and
with --mode calib the statistics moepack's calibrate computes: per expert and
layer the fp64 Grams G_in = sum x x^T (expert input) and G_mid = sum h h^T
(h = silu(x Wg^T) * (x Wu^T)), accumulated inside the expert loop (the eager
loop plus two fp64 GEMMs: no recomputation, the cheapest place for such a
hook), each layer's written to DIR as .npy files as soon as it is complete.
Prints the perplexity (eval) and the seconds of the forward pass.

usage: calib_ref.py MODEL_DIR TOKENS_H5 --mode eval|calib --threads N [--out DIR]
"""
import argparse
import os
import time
import types

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM


def experts_with_grams(layer, out):
    """The eager experts forward of transformers (MixtralExperts / Qwen3MoeExperts) plus fp64 Grams."""

    def forward(self, hidden_states, top_k_index, top_k_weights):
        final = torch.zeros_like(hidden_states)
        n_exp, d = self.num_experts, hidden_states.shape[-1]
        f = self.down_proj.shape[-1]
        with torch.no_grad():
            mask = F.one_hot(top_k_index, num_classes=n_exp).permute(2, 1, 0)
        for e in range(n_exp):
            pos, idx = torch.where(mask[e])
            x = hidden_states[idx]
            g_in = torch.zeros(d, d, dtype=torch.float64)
            g_mid = torch.zeros(f, f, dtype=torch.float64)
            if idx.numel():
                gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
                h = self.act_fn(gate) * up
                x64, h64 = x.double(), h.double()
                g_in.addmm_(x64.T, x64)
                g_mid.addmm_(h64.T, h64)
                y = F.linear(h, self.down_proj[e]) * top_k_weights[idx, pos, None]
                final.index_add_(0, idx, y.to(final.dtype))
            np.save(os.path.join(out, f"layer{layer:04d}_expert{e:04d}_G_in.npy"), g_in.numpy())
            np.save(os.path.join(out, f"layer{layer:04d}_expert{e:04d}_G_mid.npy"), g_mid.numpy())
        return final

    return forward


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tokens")
    ap.add_argument("--mode", choices=["eval", "calib"], default="eval")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/calib_ref_grams")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with h5py.File(a.tokens, "r") as f:
        ids = torch.from_numpy(f["tokens"][...].astype(np.int64))
    try:
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, experts_implementation="eager")
    except (TypeError, ValueError):
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.eval()
    if a.mode == "calib":
        os.makedirs(a.out, exist_ok=True)
        fused = [m for m in model.modules() if hasattr(m, "gate_up_proj") and hasattr(m, "down_proj")]
        assert fused, "no fused experts module found (transformers >= 5 expected)"
        for layer, m in enumerate(fused):
            m.forward = types.MethodType(experts_with_grams(layer, a.out), m)
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                              reduction="sum").item()
    sec = time.perf_counter() - t0
    n = ids.shape[0] * (ids.shape[1] - 1)
    print(f"reference {a.mode}: {ids.shape[0]} x {ids.shape[1]} tokens, {a.threads} thread(s): forward {sec:.3f} s, "
          f"perplexity {np.exp(nll / n):.4f}")


if __name__ == "__main__":
    main()
