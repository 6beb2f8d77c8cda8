"""The fused LoRA forward computes what peft's does, and hands back to peft whenever it is used otherwise."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from latentops.pipelines.finetune import adapters


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q = torch.nn.Linear(16, 24)
        self.to_out = torch.nn.Linear(24, 16, bias=False)
        self.other = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.other(self.to_out(torch.relu(self.to_q(x))))


def _pair(**lora: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two identical blocks with the same LoRA, the second with the fused forward."""
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        block = _Block()
        block.requires_grad_(False)
        config = LoraConfig(**{"r": 4, "lora_alpha": 8, "init_lora_weights": "gaussian",
                               "target_modules": ["to_q", "to_out"], **lora})  # type: ignore[arg-type]
        models.append(inject_adapter_in_model(config, block))
    for layer in models[0].modules():  # non-zero B, so the LoRA term is not zero from the start
        if hasattr(layer, "lora_B"):
            torch.manual_seed(5)
            torch.nn.init.normal_(layer.lora_B["default"].weight)
    models[1].load_state_dict(models[0].state_dict())
    return models[0], models[1]


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def test_fused_forward_matches_peft_in_outputs_and_gradients() -> None:
    peft_model, fused = _pair()
    assert adapters.use_fused_forward(fused) == 2  # to_q and to_out; the plain Linear is left alone
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    x_theirs, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = peft_model(x_theirs), fused(x_ours)
    with torch.no_grad():  # the LoRA term counts: without it the block computes something else
        base = peft_model.other(peft_model.to_out.base_layer(torch.relu(peft_model.to_q.base_layer(x))))
    assert not torch.allclose(expected, base, atol=1e-3)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    expected.square().sum().backward()
    got.square().sum().backward()
    ours, theirs = _trainable(fused), _trainable(peft_model)
    assert sorted(ours) == sorted(theirs) and len(ours) == 4
    for name, parameter in ours.items():
        torch.testing.assert_close(parameter.grad, theirs[name].grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-5, atol=1e-6)  # through base and LoRA paths


def test_fused_forward_keeps_hooks_on_the_base_layer() -> None:
    peft_model, fused = _pair()
    adapters.use_fused_forward(fused)
    seen: list[tuple[int, ...]] = []
    for model in (fused, peft_model):
        model.to_q.base_layer.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(fused(x), peft_model(x), rtol=1e-6, atol=1e-6)
    assert seen == [(3, 24), (3, 24)]  # the hook ran for the fused model as for peft's


def test_fused_forward_hands_back_to_peft_when_the_adapter_is_disabled_or_merged() -> None:
    peft_model, fused = _pair()
    adapters.use_fused_forward(fused)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))
    with_lora = fused(x).detach()
    for model in (peft_model, fused):
        for layer in model.modules():
            if hasattr(layer, "lora_A"):
                layer.enable_adapters(False)
    torch.testing.assert_close(fused(x), peft_model(x))
    assert not torch.allclose(fused(x), with_lora)  # really without the LoRA term
    for model in (peft_model, fused):
        for layer in model.modules():
            if hasattr(layer, "lora_A"):
                layer.enable_adapters(True)
                layer.merge()
    torch.testing.assert_close(fused(x), with_lora, rtol=1e-5, atol=1e-5)  # merged: the base layer alone, once


@pytest.mark.parametrize("lora", [{"lora_dropout": 0.1}, {"use_dora": True}])
def test_layers_with_dropout_or_dora_keep_peft_forward(lora: dict[str, object]) -> None:
    _, fused = _pair(**lora)
    assert adapters.use_fused_forward(fused) == 0


def test_fused_forward_under_cpu_autocast_computes_in_bfloat16() -> None:
    peft_model, fused = _pair()
    adapters.use_fused_forward(fused)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(4))
    exact = peft_model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, theirs = fused(x), peft_model(x)
    assert got.dtype == theirs.dtype == torch.bfloat16
    # Both round to bfloat16 (about 3 significant digits) at different points: compare errors, not bits.
    scale = exact.abs().max()
    assert (got.float() - exact).abs().max() < 2e-2 * scale
    assert (got.float() - exact).norm() <= 2 * (theirs.float() - exact).norm()
