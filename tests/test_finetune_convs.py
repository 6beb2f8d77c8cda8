"""Frozen convolutions with packed oneDNN weights compute what ``nn.Conv2d`` computes, and step aside otherwise."""

from __future__ import annotations

import copy

import pytest
import torch

from latentops.pipelines.finetune import convs


def _pair(cin: int, cout: int, kernel: int, stride: int, bias: bool) -> tuple[torch.nn.Conv2d, torch.nn.Conv2d]:
    torch.manual_seed(7)
    plain = torch.nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias).requires_grad_(False)
    packed = copy.deepcopy(plain)
    assert convs.use_packed_weights(packed) == 1
    return plain, packed


def _forward_backward(conv: torch.nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    out = conv(x)
    out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
    assert x.grad is not None
    return out.detach(), x.grad


@pytest.mark.parametrize(("cin", "cout", "kernel", "stride", "bias", "size"), [
    (8, 16, 3, 1, True, 12), (16, 16, 3, 2, False, 9), (16, 32, 1, 1, True, 5), (4, 16, 3, 1, True, 16)])
def test_packed_convolution_matches_conv2d_in_output_and_input_gradient(cin: int, cout: int, kernel: int, stride: int,
                                                                        bias: bool, size: int) -> None:
    assert convs.available()  # x86 builds of torch have oneDNN and the packing ops
    plain, packed = _pair(cin, cout, kernel, stride, bias)
    x = torch.randn(2, cin, size, size, generator=torch.Generator().manual_seed(1))
    expected, expected_grad = _forward_backward(plain, x)
    got, got_grad = _forward_backward(packed, x)
    assert "_packed" in packed.__dict__  # the packed path ran
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-5)
    # Other sizes (bucketed images, another batch; odd sizes change a strided layer's output padding) use the same pack.
    pack = packed.__dict__["_packed"]
    other = torch.randn(3, cin, size + 3, size + 1, generator=torch.Generator().manual_seed(2))
    for a, b in zip(_forward_backward(packed, other), _forward_backward(plain, other)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert packed.__dict__["_packed"] is pack


def test_a_weight_changed_in_place_is_packed_again() -> None:
    plain, packed = _pair(8, 8, 3, 1, True)
    x = torch.randn(1, 8, 6, 6, generator=torch.Generator().manual_seed(3))
    before = packed(x)
    with torch.no_grad():
        for conv in (plain, packed):
            conv.weight.mul_(-2)
    after = packed(x)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, plain(x), rtol=1e-5, atol=1e-5)


def test_layers_that_train_or_run_under_autocast_compute_the_usual_way() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1))
    model[0].requires_grad_(False)
    assert convs.use_packed_weights(model) == 1  # the second layer trains: left alone
    model[0].requires_grad_(True)  # trains after all: its weight gets a gradient, so the packed path steps aside
    x = torch.randn(1, 4, 6, 6)
    model(x).sum().backward()
    assert model[0].weight.grad is not None and "_packed" not in model[0].__dict__
    model[0].requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model[0](x).dtype == torch.bfloat16
    assert "_packed" not in model[0].__dict__


def test_packing_stays_within_the_memory_budget() -> None:
    conv = torch.nn.Conv2d(16, 16, 3).requires_grad_(False)  # 2,304 weights: two packed copies take 18,432 bytes
    assert convs.use_packed_weights(conv, budget_bytes=18_000) == 0
    assert convs.use_packed_weights(conv, budget_bytes=18_432) == 1


def test_a_lora_unet_trains_the_same_with_packed_convolutions() -> None:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v"]))
    packed = copy.deepcopy(unet)
    assert convs.use_packed_weights(packed) == sum(type(m) is torch.nn.Conv2d for m in unet.modules()) > 5
    generator = torch.Generator().manual_seed(4)
    x, text = torch.randn(2, 4, 16, 16, generator=generator), torch.randn(2, 7, 32, generator=generator)
    losses = []
    for model in (unet, packed):
        out = model(x, torch.tensor([10, 700]), text).sample
        loss = out.square().mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in unet.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    for name, parameter in packed.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.grad, grads[name], rtol=1e-4, atol=1e-6)
