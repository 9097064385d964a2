"""GPU only: SDPA forward+backward per backend on Llama-3.1-8B's attention shape (the runtime's SDPA path: HF Llama
with attn_implementation sdpa, causal, no mask, GQA 32/8 heads of 128, seq 4096, batch 2, bf16).

    python bench/sdpa_backends.py --out DIR     # DIR/sdpa-backends.json: ms per forward+backward, TFLOP/s, max |diff|

The runtime keeps torch's own backend order unless NEMO_MIGRATE_SDPA names one (runtime/kernels.py sdpa_priority).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("sdpa_backends: needs a CUDA GPU", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    B, H, KV, S, D = a.batch, 32, 8, a.seq, 128
    q = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    # HF's sdpa path repeats the KV heads to H before the call (repeat_kv) unless enable_gqa is used
    k = torch.randn(B, KV, S, D, device="cuda", dtype=torch.bfloat16).repeat_interleave(H // KV, 1).requires_grad_()
    v = torch.randn(B, KV, S, D, device="cuda", dtype=torch.bfloat16).repeat_interleave(H // KV, 1).requires_grad_()
    g = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
    flop = 4 * B * H * S * S * D / 2 * 3.5  # causal: half; forward 1 + backward 2.5 (FlashAttention's convention)
    res, ref = {}, None
    for name in ("flash", "cudnn", "efficient"):
        be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}[name]
        try:
            with sdpa_kernel([be]):
                def step():
                    q.grad = k.grad = v.grad = None
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    o.backward(g)
                    return o
                for _ in range(3):
                    o = step()
                torch.cuda.synchronize()
                st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                st.record()
                for _ in range(a.iters):
                    o = step()
                en.record()
                torch.cuda.synchronize()
            ms = st.elapsed_time(en) / a.iters
            out = (o.detach().float(), q.grad.float())
            ref = ref or out
            res[name] = {"ms_fwd_bwd": round(ms, 3), "tflops": round(flop / ms / 1e9, 1),
                         "max_abs_diff_vs_flash_out": float((out[0] - ref[0]).abs().max()),
                         "max_abs_diff_vs_flash_dq": float((out[1] - ref[1]).abs().max())}
        except Exception as e:  # noqa: BLE001 - a backend that cannot run this shape here is recorded as such
            res[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        print(name, res[name], flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "sdpa-backends.json").write_text(json.dumps({
        "benchmark": "SDPA forward+backward, Llama-3.1-8B attention (B %d, 32 heads, kv repeated, seq %d, d 128, bf16, causal)" % (B, S),
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(), "results": res}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
