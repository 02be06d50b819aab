"""The Engram module in PyTorch (ENGRAM.md, points 3-6).

Rows arrive already gathered from a table store (real_runs/stores.py): per
token the (N-1)*H head rows of `values_per_row` values, either as
[..., (N-1)*H, values_per_row] or flat [..., d_mem]. The module:

- concatenates the head rows into e (d_mem values per token);
- gates per backbone branch m: k = RMSNorm(W_K^m e), q = RMSNorm(h_m),
  g = <k, q> / sqrt(D), g = sign(g) sqrt(max(|g|, 1e-6)), alpha = sigmoid(g);
- values v_m = alpha_m * (W_V e) with W_V shared by the branches;
- a short causal depthwise convolution: RMSNorm per branch (eps 1e-5),
  Conv1d over the M*D channels (kernel `conv_kernel`, dilation max_ngram_size,
  left padded, no bias, zero-initialised), SiLU; Y = v + SiLU(conv(norm(v)));
- returns hidden + Y (Y is added before the layer's attention).

Decode keeps the convolution's history in a `ConvState` (the last
(kernel-1)*dilation normed values per sequence), so running a sequence token
by token gives the same Y as running it whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

GATE_EPS = 1e-6      # floor of |g| before the signed square root (the demo's value)
QK_NORM_EPS = 1e-6   # RMSNorm of keys and queries (ENGRAM.md names no value; the demo uses the dtype's eps)
CONV_NORM_EPS = 1e-5


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in float32 (or float64), returned in x's dtype."""
    xf = _wide(x)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.to(xf.dtype)).to(x.dtype)


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


@dataclass
class ConvState:
    """The last `history` normed values per sequence, [B, history, M*D] (zeros = left padding)."""
    buffer: torch.Tensor

    @classmethod
    def zeros(cls, batch: int, history: int, channels: int, device, dtype) -> "ConvState":
        return cls(torch.zeros(batch, history, channels, device=device, dtype=dtype))


class EngramModule(nn.Module):
    def __init__(self, hidden_size: int, d_mem: int, tables: int, branches: int = 1, conv_kernel: int = 4,
                 dilation: int = 3, *, device=None, dtype=torch.float32, generator: torch.Generator | None = None):
        super().__init__()
        if d_mem % tables:
            raise ValueError(f"d_mem {d_mem} is not divisible by the {tables} head tables")
        self.hidden_size = hidden_size
        self.d_mem = d_mem
        self.tables = tables
        self.values_per_row = d_mem // tables
        self.branches = branches
        self.conv_kernel = conv_kernel
        self.dilation = dilation
        factory = {"device": device, "dtype": dtype}
        M, D = branches, hidden_size
        # W_K for all branches as one [M*D, d_mem] projection; W_V shared.
        self.w_k = nn.Parameter(torch.empty(M * D, d_mem, **factory))
        self.w_v = nn.Parameter(torch.empty(D, d_mem, **factory))
        self.k_norm = nn.Parameter(torch.ones(M, D, **factory))
        self.q_norm = nn.Parameter(torch.ones(M, D, **factory))
        self.conv_norm = nn.Parameter(torch.ones(M, D, **factory))
        # Depthwise: one kernel per channel m*D + d; zero-initialised (Y = v at init).
        self.conv_weight = nn.Parameter(torch.zeros(M * D, 1, conv_kernel, **factory))
        std = 1.0 / math.sqrt(d_mem)
        with torch.no_grad():
            for w in (self.w_k, self.w_v):
                w.copy_(torch.randn(w.shape, generator=generator,
                                    device=generator.device if generator is not None else w.device).to(w) * std)
        self.requires_grad_(False)  # inference only

    @property
    def history(self) -> int:
        """Past positions the causal convolution reads."""
        return (self.conv_kernel - 1) * self.dilation

    def new_state(self, batch: int) -> ConvState:
        return ConvState.zeros(batch, self.history, self.branches * self.hidden_size,
                               self.w_v.device, self.w_v.dtype)

    def embeddings(self, rows: torch.Tensor, batch: int, length: int) -> torch.Tensor:
        """e: [B, T, d_mem] from rows [B*T or (B, T), (N-1)*H, values_per_row] or [..., d_mem]."""
        return rows.reshape(batch, length, self.d_mem).to(self.w_v.dtype)

    def forward(self, hidden: torch.Tensor, rows: torch.Tensor, state: ConvState | None = None) -> torch.Tensor:
        """hidden [B, T, D] (M = 1) or [B, T, M, D] -> hidden + Y, same shape. Updates `state` in place."""
        return hidden + self.output(hidden, rows, state).reshape(hidden.shape)

    def output(self, hidden: torch.Tensor, rows: torch.Tensor, state: ConvState | None = None) -> torch.Tensor:
        """Y: [B, T, M, D]."""
        v = self.values(hidden, rows)
        return v + self.short_conv(v, state)

    def values(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The gated values v [B, T, M, D]: token by token (the convolution alone reads neighbours)."""
        M, D = self.branches, self.hidden_size
        if hidden.dim() == 3:
            if M != 1:
                raise ValueError(f"hidden has shape {tuple(hidden.shape)}; {M} branches need [B, T, {M}, {D}]")
            hidden = hidden.unsqueeze(2)
        B, T = hidden.shape[:2]
        if hidden.shape[2:] != (M, D):
            raise ValueError(f"hidden has shape {tuple(hidden.shape)}; expected [B, T, {M}, {D}]")
        e = self.embeddings(rows, B, T)
        # Context-aware gating, one scalar per token per branch.
        k = rms_norm((e @ self.w_k.t()).view(B, T, M, D), self.k_norm, QK_NORM_EPS)
        q = rms_norm(hidden, self.q_norm, QK_NORM_EPS)
        g = (_wide(k) * _wide(q)).sum(-1) / math.sqrt(D)
        g = g.sign() * g.abs().clamp_min(GATE_EPS).sqrt()
        alpha = torch.sigmoid(g).to(e.dtype)                       # [B, T, M]
        return alpha.unsqueeze(-1) * (e @ self.w_v.t()).unsqueeze(2)   # [B, T, M, D]

    def short_conv(self, v: torch.Tensor, state: ConvState | None = None) -> torch.Tensor:
        """SiLU(conv(norm(v))), causal along T; v [B, T, M, D]."""
        B, T, M, D = v.shape
        x = rms_norm(v, self.conv_norm, CONV_NORM_EPS).reshape(B, T, M * D)
        hist = self.history
        if state is not None:
            x = torch.cat([state.buffer.to(x.dtype), x], dim=1)      # [B, hist + T, C]
            state.buffer = x[:, -hist:].contiguous() if hist else x[:, :0]
            y = F.conv1d(x.transpose(1, 2), self.conv_weight, groups=M * D, dilation=self.dilation)
        else:
            y = F.conv1d(F.pad(x.transpose(1, 2), (hist, 0)), self.conv_weight, groups=M * D,
                         dilation=self.dilation)
        return F.silu(y).transpose(1, 2).reshape(B, T, M, D)


def engram_from_config(engram_cfg, hidden_size: int, *, device=None, dtype=torch.float32,
                       generator: torch.Generator | None = None) -> EngramModule:
    """An EngramModule for a vocab.config.EngramConfig."""
    return EngramModule(hidden_size, engram_cfg.d_mem, engram_cfg.tables_per_layer, engram_cfg.branches,
                        engram_cfg.conv_kernel, engram_cfg.max_ngram_size, device=device, dtype=dtype,
                        generator=generator)
