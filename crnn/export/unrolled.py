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
``ds_rnn``, ``rnn2d``, ``rnn2d_4way``) are unrolled by any trace as they are. One of their ops does
not run in TFLM, though: the anti-diagonal scan of ``rnn2d`` / ``rnn2d_4way`` ends with ONE
concatenation of its ``H + W - 1`` diagonals, and TFLM's CONCATENATION takes at most 10 inputs
(the converter folds nested concatenations back into one). :class:`DiagonalScanExportForm` runs
the same scan and puts each diagonal's states in place by zero padding and adding instead.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crnn.layers import RNN2D, Layer2d, RNN2D4Way, layer_info
from crnn.layers.cells import CellSpec
from crnn.layers.rnn2d import diagonal_schedule
from crnn.layers.separable import BiRNNPass, RNNPass, WSBiRNN

__all__ = ["DiagonalScanExportForm", "ExportFormReport", "UnrolledPass", "export_form"]


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

    fast_directions = None  # never on the fast path: a 2-D layer with these passes runs them as they are

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


def _placed_diagonal_scan(z: Tensor, weight_hh: Tensor, sched, activation: str) -> Tensor:
    """:func:`crnn.layers.rnn2d.diagonal_scan` (same arguments, same result ``(P, N, hid)`` in
    diagonal order) without its final many-input concatenation: diagonal d's ``n`` states are
    zero-padded to the ``P`` positions (``PAD``) and added to the others (``ADD``)."""
    act = torch.tanh if activation == "tanh" else torch.relu
    P, N, hid = z.shape
    w_t = weight_hh.t()  # (2 hid, hid)
    pad = z.new_zeros(1, N, hid)
    out, prev, prev_lo, offset = None, None, 0, 0
    for lo, n, z_d in zip(sched.lo, sched.size, z.split(sched.size), strict=True):
        if prev is None:  # first diagonal: both neighbours outside the image (zero)
            h = act(z_d)
        else:  # as diagonal_scan: 'up' and 'left' are two contiguous slices of the padded previous one
            padded, s = torch.cat([pad, prev, pad]), lo - prev_lo
            up_left = torch.cat([padded[s : s + n], padded[s + 1 : s + 1 + n]], dim=-1)  # (n, N, 2 hid)
            h = act(torch.addmm(z_d.reshape(n * N, hid), up_left.reshape(n * N, 2 * hid), w_t)).view(
                n, N, hid
            )
        placed = F.pad(h, (0, 0, 0, 0, offset, P - offset - n))
        out = placed if out is None else out + placed
        prev, prev_lo, offset = h, lo, offset + n
    return out


class DiagonalScanExportForm(nn.Module):
    """Export form of :class:`RNN2D` / :class:`RNN2D4Way` (the layer itself, its weights shared):
    their forward with :func:`_placed_diagonal_scan` for the scan."""

    def __init__(self, layer: RNN2D | RNN2D4Way):
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        layer, (B, _, H, W) = self.layer, x.shape
        sched = diagonal_schedule(H, W, x.device)
        if not isinstance(layer, RNN2D4Way):  # RNN2D.forward
            z = layer.input(x.flatten(2).permute(2, 0, 1).index_select(0, sched.order))  # (P, B, hid)
            return layer._output(
                _placed_diagonal_scan(z, layer.weight_hh, sched, layer.activation), sched, x.shape
            )
        z = layer.input(x.flatten(2).permute(2, 0, 1))  # RNN2D4Way.forward: (HW, B, hid), raster order
        hid = z.shape[-1]
        z4 = z[sched.flip_order].view(H * W, 4 * B, hid)
        h4 = _placed_diagonal_scan(z4, layer.weight_hh, sched, layer.activation)  # (P, 4B, hid)
        h = h4.view(-1, B, hid).permute(1, 2, 0).index_select(2, sched.flip_inverse)
        h = h.view(B, hid, H, W, 4).sum(-1)  # (B, hid, H, W)
        return h if layer.proj is None else F.conv2d(h, layer.proj.weight[:, :, None, None])


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
    """What :func:`export_form` did: module paths of the passes it unrolled, of the layers whose
    forward is already a Python loop (a trace unrolls them), and of those among them whose scan
    was replaced by :class:`DiagonalScanExportForm`."""

    unrolled: list[str]
    traced_loops: list[str]
    placed_scans: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{p}: fused RNN pass -> unrolled export form (FC, add, activation)" for p in self.unrolled]
        out += [
            f"{p}: Python loop over steps, unrolled by the trace"
            + (
                " (diagonals placed by pad + add: TFLM concatenates <= 10 inputs)"
                if p in self.placed_scans
                else ""
            )
            for p in self.traced_loops
        ]
        return out


def _replace(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """``model`` with its submodule at ``path`` replaced by ``module`` (``module`` for ``""``)."""
    if not path:
        return module
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, module)
    return model


def export_form(model: nn.Module) -> tuple[nn.Module, ExportFormReport]:
    """A copy of ``model`` (eval mode) whose fused recurrent passes are :class:`UnrolledPass` export
    forms and whose ``rnn2d`` / ``rnn2d_4way`` layers are :class:`DiagonalScanExportForm` (same
    weights, same outputs), and the report of what was replaced.

    Raises ``ValueError`` for a fused ``nn.RNNBase`` outside a known pass (it would reach the
    converter as a fused op)."""
    model = copy.deepcopy(model).eval()
    report = ExportFormReport([], [])
    for path, layer in list(model.named_modules()):
        if isinstance(layer, Layer2d) and layer_info(layer.layer_name).python_loop:
            report.traced_loops.append(path)
            if isinstance(layer, (RNN2D, RNN2D4Way)):
                model = _replace(model, path, DiagonalScanExportForm(layer))
                report.placed_scans.append(path)
    for path, module in list(model.named_modules()):
        mode = _pass_mode(module)
        if mode is None:
            continue
        model = _replace(model, path, UnrolledPass(module.rnn, module.cell, mode))
        report.unrolled.append(path)
    left = [p for p, m in model.named_modules() if isinstance(m, nn.RNNBase)]
    if left:
        raise ValueError(f"fused RNN modules without an export form: {', '.join(left)}")
    return model, report
