"""Export forms of the recurrent layers: the recurrence written out step by step for a fixed size.

Microcontroller runtimes (TensorFlow Lite Micro) have no fused RNN / GRU / LSTM sequence op that
a PyTorch ``nn.RNN`` maps to, but they run ``FULLY_CONNECTED``, ``ADD``, ``MUL``, ``TANH``,
``LOGISTIC``, ``PACK`` and ``UNPACK``. :func:`export_form` returns a copy of a model whose fused
passes (:class:`crnn.layers.separable.RNNPass`, :class:`~crnn.layers.separable.WSBiRNN`,
:class:`~crnn.layers.separable.BiRNNPass`, used by ``srnn``, ``sws_birnn``, ``sbirnn_*`` and
``sequencer``) are replaced by :class:`UnrolledPass`: the same weights (copied from the trained
``nn.RNNBase``), the same equations, one Python step per sequence element, so a trace (ONNX,
``torch.export``) sees only those ops. It is valid for any input size (it reads ``L`` from the
input) but the exported graph is fixed to the traced one.

Per direction, with ``x`` of shape ``(L, N, I)`` (N = every other position folded into the batch):

* input term of every step at once: ``a = x W_ih^T + b`` (one matmul for the whole sequence);
* ``rnn_tanh`` / ``rnn_relu``: ``h_t = act(a_t + h_{t-1} W_hh^T)`` with ``b = b_ih + b_hh``;
* ``gru``: ``r, z = sigmoid(a_{r,z} + h W_h{r,z}^T + b_h{r,z})``,
  ``n = tanh(a_n + r * (h W_hn^T + b_hn))``, ``h_t = n + z * (h_{t-1} - n)`` with ``b = b_ih``;
* ``lstm``: ``i, f, g, o`` from ``a_t + h W_hh^T`` (``b = b_ih + b_hh``), ``c_t = f c + i g``,
  ``h_t = o tanh(c_t)``.

``h_{-1} = c_{-1} = 0``: the first step skips the recurrent product (a product with zeros).
A weight-shared pass (:class:`WSBiRNN`) computes ``a`` once for both directions (the training
form stacks ``x`` and its flip along the batch instead: the same numbers) and walks it forwards and
backwards; no flip op is exported.

Layers whose forward is already a Python loop (``crnn.layers.layer_info(name).python_loop``:
``ds_rnn``, ``rnn2d``, ``rnn2d_4way``) need no export form: any trace unrolls them as they are.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crnn.layers import Layer2d, layer_info
from crnn.layers.cells import CellSpec
from crnn.layers.separable import BiRNNPass, RNNPass, WSBiRNN

__all__ = ["ExportFormReport", "UnrolledPass", "export_form"]


class _Direction(nn.Module):
    """One direction's weights, copied (frozen) from a fused RNN: ``W_ih (gH, I)``, ``W_hh (gH, H)``,
    the input-term bias ``b (gH)`` and (GRU only) the recurrent bias ``b_hh (gH)``."""

    def __init__(self, rnn: nn.RNNBase, suffix: str, cell: CellSpec):
        super().__init__()

        def frozen(name: str) -> nn.Parameter:
            return nn.Parameter(getattr(rnn, f"{name}_l0{suffix}").detach().clone(), requires_grad=False)

        self.weight_ih, self.weight_hh = frozen("weight_ih"), frozen("weight_hh")
        b_ih, b_hh = frozen("bias_ih"), frozen("bias_hh")
        if cell.name == "gru":  # b_hn sits inside r * (...): keep the recurrent bias apart
            self.bias, self.bias_hh = b_ih, b_hh
        else:
            self.bias, self.bias_hh = nn.Parameter(b_ih + b_hh, requires_grad=False), None


class UnrolledPass(nn.Module):
    """Export form of a fused 1-D pass: ``(L, *batch, I) -> (L, *batch, out_size)``.

    ``mode``: ``"forward"`` (one direction, :class:`RNNPass`), ``"shared"`` (one weight set read
    forwards and backwards, summed: :class:`WSBiRNN`), ``"sum"`` / ``"cat"`` (two weight sets,
    forward and backward, summed or concatenated ``[forward | backward]``: :class:`BiRNNPass`).
    """

    def __init__(self, rnn: nn.RNNBase, cell: CellSpec, mode: str):
        super().__init__()
        if rnn.num_layers != 1 or not rnn.bias or rnn.batch_first or getattr(rnn, "proj_size", 0):
            raise ValueError(
                f"{type(rnn).__name__}: only a one-layer, biased, sequence-first RNN has an export form"
            )
        if mode not in ("forward", "shared", "sum", "cat"):
            raise ValueError(f"unknown mode {mode!r}")
        if (mode in ("sum", "cat")) != rnn.bidirectional:
            kind = "bi" if rnn.bidirectional else "uni"
            raise ValueError(f"mode {mode!r} does not match a {kind}directional RNN")
        self.cell, self.mode, self.hidden_size = cell, mode, rnn.hidden_size
        self.out_size = 2 * rnn.hidden_size if mode == "cat" else rnn.hidden_size
        self.directions = nn.ModuleList(
            [_Direction(rnn, s, cell) for s in (["", "_reverse"] if rnn.bidirectional else [""])]
        )

    def _scan(self, a: list[Tensor], d: _Direction, reverse: bool) -> list[Tensor]:
        """States ``h_t`` (each ``(N, H)``) for the input terms ``a_t`` (each ``(N, gH)``), in step order."""
        H, gates = self.hidden_size, self.cell.gates
        order = range(len(a) - 1, -1, -1) if reverse else range(len(a))
        states: list[Tensor | None] = [None] * len(a)
        h = c = None
        for t in order:
            if gates == 1:
                pre = a[t] if h is None else a[t] + F.linear(h, d.weight_hh)
                h = torch.tanh(pre) if self.cell.activation == "tanh" else torch.relu(pre)
            elif self.cell.name == "gru":
                gh = d.bias_hh if h is None else F.linear(h, d.weight_hh, d.bias_hh)
                r = torch.sigmoid(a[t][:, :H] + gh[..., :H])
                z = torch.sigmoid(a[t][:, H : 2 * H] + gh[..., H : 2 * H])
                n = torch.tanh(a[t][:, 2 * H :] + r * gh[..., 2 * H :])
                h = n - z * n if h is None else n + z * (h - n)
            else:  # lstm: i, f, g, o
                pre = a[t] if h is None else a[t] + F.linear(h, d.weight_hh)
                i, f, g, o = (pre[:, k * H : (k + 1) * H] for k in range(4))
                ig = torch.sigmoid(i) * torch.tanh(g)
                c = ig if c is None else torch.sigmoid(f) * c + ig
                h = torch.sigmoid(o) * torch.tanh(c)
            states[t] = h
        return states

    def forward_seq_first(self, x: Tensor) -> Tensor:
        L, batch = x.shape[0], x.shape[1:-1]
        x = x.reshape(L, -1, x.shape[-1])  # (L, N, I)
        first = self.directions[0]
        a = F.linear(x, first.weight_ih, first.bias).unbind(0)  # L x (N, gH)
        forward = torch.stack(self._scan(a, first, reverse=False))  # (L, N, H)
        if self.mode == "forward":
            y = forward
        elif self.mode == "shared":
            y = forward + torch.stack(self._scan(a, first, reverse=True))
        else:
            last = self.directions[1]
            b = F.linear(x, last.weight_ih, last.bias).unbind(0)
            backward = torch.stack(self._scan(b, last, reverse=True))
            y = forward + backward if self.mode == "sum" else torch.cat([forward, backward], dim=-1)
        return y.view(L, *batch, self.out_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_seq_first(x)

    def extra_repr(self) -> str:
        return f"cell={self.cell.name!r}, mode={self.mode!r}, out_size={self.out_size}"


def _pass_mode(module: nn.Module) -> str | None:
    if isinstance(module, WSBiRNN):
        return "shared"
    if isinstance(module, BiRNNPass):
        return module.merge
    if isinstance(module, RNNPass):
        return "forward"
    return None


@dataclass
class ExportFormReport:
    """What :func:`export_form` did: module paths of the passes it unrolled, and of the layers
    it kept because their forward is already a Python loop (a trace unrolls them)."""

    unrolled: list[str]
    traced_loops: list[str]

    def lines(self) -> list[str]:
        out = [f"{p}: fused RNN pass -> unrolled export form (FC, add, activation)" for p in self.unrolled]
        out += [f"{p}: Python loop over steps, unrolled by the trace as it is" for p in self.traced_loops]
        return out


def export_form(model: nn.Module) -> tuple[nn.Module, ExportFormReport]:
    """A copy of ``model`` (eval mode) whose fused recurrent passes are :class:`UnrolledPass` export
    forms (same weights, same outputs), and the report of what was replaced.

    Raises ``ValueError`` for a fused ``nn.RNNBase`` outside a known pass (it would reach the
    converter as a fused op)."""
    model = copy.deepcopy(model).eval()
    report = ExportFormReport([], [])
    for path, layer in list(model.named_modules()):
        if isinstance(layer, Layer2d) and layer_info(layer.layer_name).python_loop:
            report.traced_loops.append(path)
    for path, module in list(model.named_modules()):
        mode = _pass_mode(module)
        if mode is None:
            continue
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, attr, UnrolledPass(module.rnn, module.cell, mode))
        report.unrolled.append(path)
    left = [p for p, m in model.named_modules() if isinstance(m, nn.RNNBase)]
    if left:
        raise ValueError(f"fused RNN modules without an export form: {', '.join(left)}")
    return model, report
