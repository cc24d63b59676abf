"""Context managers for post-hoc maps: every change they make to a model is undone on exit, also
after an exception (hooks removed, train/eval flags restored)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """The model in eval mode inside; every module's own train/eval flag restored on exit. A model
    already in eval mode throughout is left alone (no per-module attribute writes: a call's fixed cost
    on models of hundreds of modules)."""
    training = [m for m in model.modules() if m.training]
    if training:
        model.eval()
    try:
        yield model
    finally:
        for module in training:
            module.training = True


@contextlib.contextmanager
def frozen(model: nn.Module):
    """The model's parameters with requires_grad off inside, so a forward on inputs that do not
    require grad records no autograd graph (until `capture` starts one at its layer); each
    parameter's own flag restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


class Activation:
    """What `capture` saw: `value`, the layer's output (B, K, h, w) as computed, in the autograd
    graph: a leaf requiring grad when the layer's input and parameters do not (a `frozen` model:
    the graph, and its memory, start at the layer), or None if the layer did not run."""

    value: torch.Tensor | None = None


@contextlib.contextmanager
def capture(layer: nn.Module):
    """Record `layer`'s output during the forward passes inside.

    The hook keeps the output itself and hands a clone downstream, so an in-place op after the
    layer (a `ReLU(inplace=True)`) changes the clone, never the recorded activation, while
    gradients still flow through it to the recorded tensor.
    """
    record = Activation()

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"the hooked layer {type(module).__name__} returns {type(output).__name__}, "
                            "not a tensor")
        if not output.requires_grad:  # frozen model: start the graph here
            output = output.detach().requires_grad_(True)
        record.value = output
        return output.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()


class _GuidedReLUGrad(torch.autograd.Function):
    """Identity forward on a ReLU's output y; backward passes relu(grad) where y > 0."""

    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad.clamp_min(0) * (y > 0).to(grad.dtype)


@contextlib.contextmanager
def guided_relus(model: nn.Module):
    """Guided backpropagation (Springenberg et al., 2015) through every `nn.ReLU` (and `nn.ReLU6`) of
    the model: the gradient at a ReLU's input is its plain gradient (zero where the input is <= 0, and
    >= 6 for ReLU6) with the negative entries of the incoming gradient zeroed as well. Works with
    in-place ReLUs (the rule is applied to the output, whose positive entries are those of the input)."""
    handles = [m.register_forward_hook(lambda module, inputs, output: _GuidedReLUGrad.apply(output))
               for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    if not handles:
        raise ValueError(f"{type(model).__name__} has no nn.ReLU modules to guide")
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Substitute:
    """What `substitute` hands downstream of its layer: `value`, set before each forward inside."""

    value: torch.Tensor | None = None


@contextlib.contextmanager
def substitute(layer: nn.Module):
    """Replace `layer`'s output by `record.value` (set before each forward inside) in the forward
    passes inside, whatever the layer computed; its batch may differ from the layer's input's."""
    record = Substitute()
    handle = layer.register_forward_hook(lambda module, inputs, output: record.value)
    try:
        yield record
    finally:
        handle.remove()
