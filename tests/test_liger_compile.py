"""Liger's modules trace as PyTorch ops under ``torch.compile`` (engine.chat.liger_compile): the
same math as the modules they replaced, computed here by transformers' own Qwen3 RMSNorm and MLP."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm

from engine.chat.liger_compile import _when_compiling, rms_norm, swiglu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_llama_casting_is_transformers_rmsnorm(dtype):
    torch.manual_seed(0)
    norm = Qwen3RMSNorm(64, eps=1e-6).to(dtype)
    norm.weight.data.normal_()
    norm.offset, norm.casting_mode = 0.0, "llama"  # the attributes LigerRMSNorm carries
    x = torch.randn(3, 5, 64, dtype=dtype)
    assert torch.equal(rms_norm(norm, x), norm(x))


def test_rms_norm_gemma_casting_weights_in_float32_with_offset():
    torch.manual_seed(0)
    norm = Qwen3RMSNorm(32, eps=1e-6).to(torch.bfloat16)
    norm.offset, norm.casting_mode = 1.0, "gemma"
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    xf = x.float()
    want = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + norm.weight.float())
    assert torch.equal(rms_norm(norm, x), want.to(torch.bfloat16))


def test_swiglu_is_transformers_mlp():
    torch.manual_seed(0)
    mlp = Qwen3MLP(Qwen3Config(hidden_size=32, intermediate_size=64, hidden_act="silu"))
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(swiglu(mlp, x), mlp(x))


def test_the_switch_traces_the_torch_math_and_runs_the_kernel_eagerly():
    """A module class switched as Liger's are: eager calls keep the class's own forward (the
    kernel); under torch.compile the traced function is what runs."""

    class Kernel(torch.nn.Module):
        calls = 0

        def forward(self, x):
            Kernel.calls += 1
            return x * 0  # not the norm: tells which path ran

    _when_compiling(Kernel, lambda self, x: x + 1)
    _when_compiling(Kernel, lambda self, x: x + 2)  # a second switch changes nothing
    m = Kernel()
    x = torch.ones(3)
    assert torch.equal(m(x), torch.zeros(3)) and Kernel.calls == 1
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), torch.full((3,), 2.0))
    assert Kernel.calls == 1  # the kernel's forward was not traced
