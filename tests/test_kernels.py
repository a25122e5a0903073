"""What a CUDA record says of how it ran: the attention kernels the step dispatched to, the
TF32 settings and the allocator's configuration."""

import torch
import torch.nn.functional as F

from petlbench.measure.kernels import MATH, AttentionKernels, cuda_settings


def _attend(**kwargs):
    q = torch.randn(2, 2, 5, 8, requires_grad=True)
    F.scaled_dot_product_attention(q, q, q, **kwargs).sum().backward()


def test_fused_kernels_are_named_forward_and_backward():
    with AttentionKernels() as seen:
        _attend()
    assert seen.kernels == ["_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward"]


def test_unfused_attention_is_math_and_no_attention_is_nothing():
    with AttentionKernels() as seen:
        _attend(dropout_p=0.5)  # the CPU has no fused kernel with dropout
    assert seen.kernels == [MATH]
    with AttentionKernels() as seen:
        torch.randn(3, 3).softmax(-1)
    assert seen.kernels == []


def test_cuda_settings_name_tf32_and_the_allocator_configuration(monkeypatch):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    settings = cuda_settings()
    assert settings["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True" and settings["PYTORCH_ALLOC_CONF"] is None
    assert settings["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert {type(settings[k]) for k in ("cuda_matmul_allow_tf32", "cudnn_allow_tf32")} == {bool}
