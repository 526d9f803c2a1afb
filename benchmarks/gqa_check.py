"""Does this torch's varlen_attn take fewer K/V heads than Q heads natively? Compares to repeated K/V."""

import torch
from torch.nn.attention.varlen import varlen_attn

torch.manual_seed(0)
T, H, KV, D = 4096, 32, 8, 128
cu = torch.tensor([0, 1000, 2500, 4096], dtype=torch.int32, device="cuda")
q = torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16)
k = torch.randn(T, KV, D, device="cuda", dtype=torch.bfloat16)
v = torch.randn(T, KV, D, device="cuda", dtype=torch.bfloat16)
ref = varlen_attn(
    q,
    k.repeat_interleave(H // KV, 1),
    v.repeat_interleave(H // KV, 1),
    cu,
    cu,
    1596,
    1596,
    window_size=(-1, 0),
)
try:
    out = varlen_attn(q, k, v, cu, cu, 1596, 1596, window_size=(-1, 0))
    print("native GQA max abs diff vs repeated:", (out.float() - ref.float()).abs().max().item())
except Exception as e:  # noqa: BLE001
    print("native GQA not supported:", type(e).__name__, str(e)[:200])
