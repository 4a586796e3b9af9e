"""gptq_ref.py - llm-compressor's GPTQ (quantize_weight) on the block bench_gptq uses, one torch thread.

usage: python bench/gptq_ref.py [M N [FORMAT [ACT_ORDER]]]   (default 4096 14336 w4g128 1)
Needs llmcompressor (pip install llmcompressor); never run in CI. Same construction as bench_gptq.c:
W ~ N(0, 0.02^2) [M, N], H = c c^T * rho^|i-j| (rho 0.9, c log-normal), static min-max group scales
(compressed-tensors calculate_qparams, rounded to fp16), blocksize 128, percdamp 0.01, act-order
"weight" (llm-compressor's default "static") or none. Only the quantize_weight call is timed.
Prints "ref_seconds WALL CPU"."""
import sys
import time

import torch
from loguru import logger
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.utils import calculate_qparams
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

FORMATS = {"w4g128": (4, 128), "w3g128": (3, 128), "w2g128": (2, 128), "w2g64": (2, 64)}


def main():
    m = int(sys.argv[1]) if len(sys.argv) > 2 else 4096
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 14336
    name = sys.argv[3] if len(sys.argv) > 3 else "w4g128"
    act_order = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    bits, group = FORMATS[name]
    torch.set_num_threads(1)
    logger.disable("llmcompressor")
    gen = torch.Generator().manual_seed(4)
    W = torch.randn(m, n, generator=gen) * 0.02
    c = torch.exp(0.5 * torch.randn(n, generator=gen))
    idx = torch.arange(n, dtype=torch.float32)
    H = (idx[:, None] - idx[None, :]).abs_()
    H.mul_(torch.log(torch.tensor(0.9))).exp_().mul_(c[:, None]).mul_(c[None, :])
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=False, strategy="group", group_size=group,
                            actorder="weight" if act_order else None)
    Wg = W.reshape(m, n // group, group)
    scale, zp = calculate_qparams(Wg.amin(-1), Wg.amax(-1), args)
    scale = scale.to(torch.float16).to(torch.float32)
    print(f"llm-compressor quantize_weight {name} of W [{m}, {n}], act-order {'on' if act_order else 'off'}, "
          f"torch {torch.__version__}, 1 thread", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    Q, losses, fallback = quantize_weight(W[None], H[None], scale[None], zp.float()[None], None, args,
                                          blocksize=128, percdamp=0.01)
    t, c = time.perf_counter() - t0, time.process_time() - c0
    assert not bool(fallback[0])
    print(f"  quantize_weight: {t:.2f} s wall, {c:.2f} s CPU")
    print(f"ref_seconds {t:.3f} {c:.3f}")


if __name__ == "__main__":
    main()
