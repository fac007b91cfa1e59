"""One training step of K copies of a small 1-D CNN, computed five ways: where the batched CNN's time goes.

The network is ``scripts/bench_models.py:cnn1d`` as ``scripts/bench_cnn.toml`` trains it (two
``Conv1d`` of 16 channels, kernel 5, padding 2, ReLU, mean over 40 steps, a linear read-out; batch
64, MSE), one forward and backward pass of K copies on a shared batch:

1. ``alone``: K steps of one copy, autograd on the module (the one-at-a-time path, without its optimizer);
2. ``vmap``: ``torch.func.vmap`` over ``functional_call`` (what ``tuner.training.functional`` runs):
   its batching rule turns the second convolution into one grouped convolution of K groups, the
   bias added apart;
3. ``vmap unfold``: the same, each ``Conv1d`` swapped for im2col (``unfold``) and one matrix product,
   which vmap turns into one ``bmm`` over the copies;
4. ``vmap bias inside`` and ``vmap channels-last``: the same, each ``Conv1d`` swapped for a custom op
   whose vmap rule runs one grouped ``conv1d`` with the bias inside the convolution, or one grouped
   ``conv2d`` in channels-last memory (oneDNN's fast layout for the forward pass), bias inside;
5. ``by hand``: the K copies written out as one network without vmap (grouped ``conv1d``, bias
   inside), the floor of any rewriting of the vmapped step.

Each line: the fastest of ``--repeats`` calls, the ways taken in turns so that a busy machine slows
all alike, and the largest difference of the copies' gradients from ``vmap``'s.

Run:  python scripts/bench_conv_copies.py --k 16 32
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import cnn1d

BATCH, STEPS, FEATURES, WIDTH = 64, 40, 2, 16


def unfold_conv1d(self: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``Conv1d.forward`` (groups 1, zero padding) as im2col and one matrix product."""
    (kernel,), (stride,), (padding,), (dilation,) = self.kernel_size, self.stride, self.padding, self.dilation
    windows = F.pad(x, (padding, padding)).unfold(-1, dilation * (kernel - 1) + 1, stride)[..., ::dilation]
    out = torch.einsum("bclj,ocj->bol", windows, self.weight)  # (batch, out, length)
    return out + self.bias[:, None] if self.bias is not None else out


@torch.library.custom_op("bench_conv_copies::conv1d", mutates_args=())
def _conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int, channels_last: bool) -> torch.Tensor:
    return F.conv1d(x, weight, bias, padding=padding)


@_conv1d.register_vmap
def _conv1d_copies(info, in_dims, x, weight, bias, padding, channels_last):  # type: ignore[no-untyped-def]
    """K copies' convolution as one grouped convolution, the bias inside it; conv2d in channels-last memory or conv1d."""
    x_dim, weight_dim, bias_dim = in_dims[:3]
    k = info.batch_size
    weight = weight.movedim(weight_dim, 0) if weight_dim is not None else weight.expand(k, *weight.shape)
    bias = bias.movedim(bias_dim, 0) if bias_dim is not None else bias.expand(k, *bias.shape)
    out_channels = weight.shape[1]
    if not channels_last:
        x, groups = (x, 1) if x_dim is None else (x.movedim(x_dim, 1).flatten(1, 2), k)
        out = F.conv1d(x, weight.flatten(0, 1), bias.reshape(-1), padding=padding, groups=groups)
        return out.unflatten(1, (k, out_channels)), 1
    w = weight.reshape(k * out_channels, *weight.shape[2:]).unsqueeze(2).contiguous(memory_format=torch.channels_last)
    if x_dim is None:  # rows shared by the copies: one convolution with K times the filters
        x4, groups = x.unsqueeze(2), 1
    else:
        x = x.movedim(x_dim, 1)  # (batch, K, channels, length)
        x4, groups = x.reshape(x.shape[0], -1, 1, x.shape[-1]), k
    out = F.conv2d(x4.contiguous(memory_format=torch.channels_last), w, bias.reshape(-1), padding=(0, padding), groups=groups)
    return out.squeeze(2).unflatten(1, (k, out_channels)), 1


def channels_last_conv1d(self: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    return _conv1d(x, self.weight, self.bias, self.padding[0], True)


def bias_inside_conv1d(self: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    return _conv1d(x, self.weight, self.bias, self.padding[0], False)


def _by_hand(x: torch.Tensor, y: torch.Tensor, p: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """The K copies' summed losses, written out without vmap: grouped conv1d, bias inside."""
    flat = lambda name: p[name].reshape(-1, *p[name].shape[2:])
    h = F.relu(F.conv1d(x.transpose(1, 2), flat("convs.0.weight"), flat("convs.0.bias"), padding=2))
    h = F.relu(F.conv1d(h, flat("convs.2.weight"), flat("convs.2.bias"), padding=2, groups=k))
    h = h.mean(2).view(len(x), k, -1)
    out = torch.einsum("bkc,koc->kbo", h, p["out.weight"]) + p["out.bias"][:, None]
    return ((out - y) ** 2).mean((1, 2)).sum()


def step_functions(k: int) -> dict[str, Callable[[], torch.Tensor]]:
    """Each way's step: forward and backward, returning the copies' gradients in one flat tensor."""
    torch.manual_seed(0)
    models = [cnn1d((STEPS, FEATURES), 1, WIDTH, 2) for _ in range(k)]
    params, _ = stack_module_state(models)
    base = models[0]
    x, y = torch.randn(BATCH, STEPS, FEATURES), torch.randn(BATCH, 1)
    names = list(params)

    def grads_of(loss: torch.Tensor, leaves: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, leaves)])

    def vmapped(conv_forward: Callable[..., torch.Tensor] | None) -> Callable[[], torch.Tensor]:
        def step() -> torch.Tensor:
            leaves = {n: t.detach().requires_grad_(True) for n, t in params.items()}
            call = lambda p, rows: functional_call(base, (p,), (rows,))
            with mock.patch.object(nn.Conv1d, "forward", conv_forward) if conv_forward else contextlib.nullcontext():
                out = vmap(call, in_dims=(0, None))(leaves, x)
            return grads_of(((out - y) ** 2).mean((1, 2)).sum(), list(leaves.values()))
        return step

    def alone() -> torch.Tensor:
        grads = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(F.mse_loss(m(x), y), list(m.parameters()))])
                 for m in models]
        return torch.stack(grads).view(k, -1)  # per copy, not in the stacked layout: not compared

    def by_hand() -> torch.Tensor:
        leaves = {n: t.detach().requires_grad_(True) for n, t in params.items()}
        return grads_of(_by_hand(x, y, leaves, k), [leaves[n] for n in names])

    return {"alone": alone, "vmap": vmapped(None), "vmap unfold": vmapped(unfold_conv1d),
            "vmap bias inside": vmapped(bias_inside_conv1d), "vmap channels-last": vmapped(channels_last_conv1d),
            "by hand": by_hand}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[32], help="copies [default 32]")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for k in args.k:
        steps = step_functions(k)
        reference = steps["vmap"]()
        differences = {name: "" if name == "alone" else f"{(step() - reference).abs().max().item():.1e}"
                       for name, step in steps.items()}
        best = dict.fromkeys(steps, float("inf"))
        for _ in range(args.repeats):
            for name, step in steps.items():
                started = time.perf_counter()
                step()
                best[name] = min(best[name], time.perf_counter() - started)
        print(f"K={k}, torch threads {torch.get_num_threads()}, load average {' '.join(f'{a:.2f}' for a in os.getloadavg())}")
        for name, seconds in best.items():
            print(f"  {name:<19} {seconds * 1e3:7.2f} ms  {best['alone'] / seconds:4.2f}x alone  "
                  f"max |grad - vmap's| {differences[name] or '-'}")


if __name__ == "__main__":
    main()
