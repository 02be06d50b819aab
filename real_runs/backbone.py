"""A decoder-only backbone with Engram layers, random weights, for real timing runs.

- attention: torch SDPA, MHA or GQA from AttentionConfig (heads, kv_heads,
  head_dim). MLA presets are run as MHA with those dims (their KV cache in
  this implementation holds K and V, not MLA's compressed latent). No RoPE:
  it would not change the timing picture at these sizes.
- FFN: dense SwiGLU on BackboneConfig.dense_layers (every layer without
  [moe]); MoE elsewhere: shared experts (one SwiGLU of shared*I) plus routed
  experts with top-k softmax routing (top-k weights renormalised to sum 1),
  run as grouped matmuls over tokens sorted by expert (`torch._grouped_mm`
  where it works, else a loop over experts; never a loop over tokens).
- Engram (real_runs/engram.py) at EngramConfig.layer_ids, before the layer's
  attention (residual add). Its rows come from `get_rows(layer_id)`, called
  just when the layer needs them: that is where a run waits for its fetch.
- Multi-branch (mHC, EngramConfig.branches = M > 1) is approximated: the
  hidden state is [B, T, M, D]; attention and FFN read the branch mean and
  add their output to every branch; the final norm reads the branch mean.

Weights are seeded (bf16 on GPU, float32 on CPU by default). `decode` runs
one new token per sequence against a growing KV cache; `prefill` runs a
batch of (right-padded) prompts with a causal mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from real_runs.engram import CONV_NORM_EPS, ConvState, EngramModule, engram_from_config, rms_norm

NORM_EPS = 1e-6
Hook = Callable[[int, str], None]


def _randn(shape, std: float, gen: torch.Generator, device, dtype) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape, generator=gen, device=device, dtype=dtype) * std, requires_grad=False)


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, inter: int, gen, device, dtype):
        super().__init__()
        self.w_gu = _randn((hidden, 2 * inter), 1 / math.sqrt(hidden), gen, device, dtype)
        self.w_down = _randn((inter, hidden), 0.5 / math.sqrt(inter), gen, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = (x @ self.w_gu).chunk(2, dim=-1)
        return (F.silu(g) * u) @ self.w_down


class MoE(nn.Module):
    """Shared + routed experts; `impl` is "auto" (grouped mm if it works here), "grouped" or "loop"."""

    def __init__(self, hidden: int, shared: int, routed: int, top_k: int, inter: int, gen, device, dtype,
                 impl: str = "auto"):
        super().__init__()
        self.routed, self.top_k, self.inter = routed, top_k, inter
        self.router = _randn((hidden, routed), 1 / math.sqrt(hidden), gen, device, dtype)
        self.w_gu = _randn((routed, hidden, 2 * inter), 1 / math.sqrt(hidden), gen, device, dtype)
        self.w_down = _randn((routed, inter, hidden), 0.5 / math.sqrt(inter), gen, device, dtype)
        self.shared = SwiGLU(hidden, shared * inter, gen, device, dtype) if shared else None
        self.impl = impl

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k expert ids [N, k] and weights [N, k] (softmax, then renormalised over the top k)."""
        probs = torch.softmax((x @ self.router).float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        return experts, (weights / weights.sum(-1, keepdim=True)).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        experts, weights = self.route(x)
        flat = experts.flatten()
        order = torch.argsort(flat, stable=True)
        token = order // self.top_k
        xs = x.index_select(0, token)
        # Not bincount: on CUDA it reads its maximum back to the host, a sync in every MoE layer.
        counts = torch.zeros(self.routed, dtype=torch.int64, device=x.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))
        ys = self._experts(xs, counts)
        ys = ys * weights.flatten().index_select(0, order).unsqueeze(-1)
        out = torch.zeros_like(x).index_add_(0, token, ys)
        if self.shared is not None:
            out = out + self.shared(x)
        return out.reshape(shape)

    def _experts(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """SwiGLU of each row of xs (sorted by expert) by its expert."""
        if self.impl in ("auto", "grouped") and hasattr(torch, "_grouped_mm"):
            try:
                offs = torch.cumsum(counts, 0).to(torch.int32)
                g, u = torch._grouped_mm(xs, self.w_gu, offs=offs).chunk(2, dim=-1)
                return torch._grouped_mm(F.silu(g) * u, self.w_down, offs=offs)
            except (RuntimeError, TypeError, NotImplementedError):
                if self.impl == "grouped":
                    raise
                self.impl = "loop"  # not supported for this device/dtype/shape: loop over experts from now on
        return self._experts_loop(xs, counts)

    def _experts_loop(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts.tolist()):   # one host sync per layer, one matmul pair per busy expert
            if n:
                g, u = (xs[start:start + n] @ self.w_gu[e]).chunk(2, dim=-1)
                out[start:start + n] = (F.silu(g) * u) @ self.w_down[e]
                start += n
        return out


@dataclass
class KVCache:
    """Per layer K and V [B, kv_heads, capacity, head_dim]; lengths [B] tokens already cached."""
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    lengths: torch.Tensor
    capacity: int

    @classmethod
    def allocate(cls, layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int, lengths,
                 device, dtype) -> "KVCache":
        shape = (batch, kv_heads, capacity, head_dim)
        # Past context of random-weight "prompts": zeros are as good as any value for timing.
        k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        lengths = torch.as_tensor(lengths, dtype=torch.int64, device=device).clone()
        return cls(k, v, lengths, capacity)


@dataclass
class Packed:
    """A serving step's chunks packed as one sequence of T tokens ([1, T] ids), each chunk in its request's
    KV slot: chunk i is tokens bounds[i]:bounds[i + 1], slot slots[i], positions starts[i] onwards.

    One-token chunks (decodes) attend as one batch (decode_attention over their slots); longer chunks
    (prompt work) attend one by one, causally within the chunk and to their slot's earlier positions.
    `states` holds each Engram layer's convolution history per slot ([slots, history, M*D])."""
    cache: KVCache
    states: dict
    token_slot: torch.Tensor   # [T] each token's slot
    token_pos: torch.Tensor    # [T] each token's position in its request
    single_tok: torch.Tensor   # [S] tokens of the one-token chunks
    single_slot: torch.Tensor  # [S]
    single_len: int            # positions the one-token chunks attend to (the longest + 1)
    runs: list                 # (first token, end token, slot, start position) of the longer chunks
    run_tok: torch.Tensor      # the longer chunks' tokens, in order

    @classmethod
    def build(cls, cache: KVCache, states: dict, slots, starts, counts, device) -> "Packed":
        slots, starts, counts = (torch.as_tensor(a, dtype=torch.int64) for a in (slots, starts, counts))
        first = torch.cumsum(counts, 0) - counts
        chunk = torch.repeat_interleave(torch.arange(counts.numel()), counts)
        pos = starts[chunk] + torch.arange(int(counts.sum())) - first[chunk]
        one = torch.nonzero(counts == 1).flatten()
        runs = [(int(first[i]), int(first[i] + counts[i]), int(slots[i]), int(starts[i]))
                for i in torch.nonzero(counts > 1).flatten().tolist()]
        run_tok = torch.cat([torch.arange(a, b) for a, b, _, _ in runs]) if runs else torch.zeros(0, dtype=torch.int64)
        return cls(cache, states, slots[chunk].to(device), pos.to(device), first[one].to(device),
                   slots[one].to(device), int(starts[one].max()) + 1 if one.numel() else 0, runs, run_tok.to(device))


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, gen, device, dtype):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.w_qkv = _randn((hidden, (heads + 2 * kv_heads) * head_dim), 1 / math.sqrt(hidden), gen, device, dtype)
        self.w_o = _randn((heads * head_dim, hidden), 0.5 / math.sqrt(heads * head_dim), gen, device, dtype)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                max_len: int | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        q, k, v = (x @ self.w_qkv).split([H * hd, KV * hd, KV * hd], dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)
        k = k.view(B, T, KV, hd).transpose(1, 2)
        v = v.view(B, T, KV, hd).transpose(1, 2)
        if cache is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=H != KV)
        else:
            if T != 1:
                raise ValueError("decode with a KV cache takes one new token per sequence")
            b = torch.arange(B, device=x.device)
            pos = cache.lengths
            cache.k[layer][b, :, pos] = k[:, :, 0]
            cache.v[layer][b, :, pos] = v[:, :, 0]
            L = max_len if max_len is not None else cache.capacity
            o = decode_attention(q, cache.k[layer][:, :, :L], cache.v[layer][:, :, :L], pos)
        return o.transpose(1, 2).reshape(B, T, H * hd) @ self.w_o


    def packed(self, x: torch.Tensor, p: Packed, layer: int) -> torch.Tensor:
        """x [1, T, D] of a packed serving step: its keys and values go to their slots' positions, then each
        chunk attends to its slot's positions up to its own."""
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        q, k, v = (x[0] @ self.w_qkv).split([H * hd, KV * hd, KV * hd], dim=-1)
        q = q.view(-1, H, hd)
        keys, values = p.cache.k[layer], p.cache.v[layer]
        keys[p.token_slot, :, p.token_pos] = k.view(-1, KV, hd)
        values[p.token_slot, :, p.token_pos] = v.view(-1, KV, hd)
        o = torch.empty_like(q)
        if p.single_tok.numel():
            L = p.single_len
            o[p.single_tok] = decode_attention(q[p.single_tok].unsqueeze(2), keys[p.single_slot, :, :L],
                                               values[p.single_slot, :, :L], p.token_pos[p.single_tok])[:, :, 0]
        for a, b, slot, start in p.runs:
            qr = q[a:b].transpose(0, 1).unsqueeze(0)                     # [1, H, n, hd]
            kr, vr = keys[slot:slot + 1, :, :start + b - a], values[slot:slot + 1, :, :start + b - a]
            mask = None
            if start:   # a continued chunk: all earlier positions, causal within the chunk
                mask = (torch.arange(start + b - a, device=x.device)[None, :]
                        <= start + torch.arange(b - a, device=x.device)[:, None])
            o[a:b] = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=mask, is_causal=not start,
                                                    enable_gqa=H != KV)[0].transpose(0, 1)
        return o.reshape(1, -1, H * hd) @ self.w_o


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """One query per sequence over its cached keys: q [B, H, 1, hd], keys/values [B, KV, L, hd], pos [B] (the
    newest cached position; later slots are masked). Returns [B, H, 1, hd]. Calibration times this very call."""
    B, H, _, hd = q.shape
    KV, L = keys.shape[1], keys.shape[2]
    mask = (torch.arange(L, device=q.device) <= pos.unsqueeze(1)).view(B, 1, 1, L)
    # GQA for one query per sequence: the G query heads of a KV head become G query rows.
    qg = q.reshape(B, KV, H // KV, hd)
    return F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask).reshape(B, H, 1, hd)


class DecoderLayer(nn.Module):
    def __init__(self, index: int, backbone_cfg, engram_cfg, gen, device, dtype, moe_impl: str = "auto"):
        super().__init__()
        b, a = backbone_cfg, backbone_cfg.attention
        D = b.hidden_size
        self.index = index
        self.attn_norm = nn.Parameter(torch.ones(D, device=device, dtype=dtype), requires_grad=False)
        self.ffn_norm = nn.Parameter(torch.ones(D, device=device, dtype=dtype), requires_grad=False)
        self.attn = Attention(D, a.heads, a.kv_heads, a.head_dim, gen, device, dtype)
        if b.is_dense(index):
            self.ffn = SwiGLU(D, b.intermediate_size, gen, device, dtype)
        else:
            m = b.moe
            self.ffn = MoE(D, m.shared_experts, m.routed_experts, m.top_k, m.expert_intermediate_size,
                           gen, device, dtype, impl=moe_impl)
        self.engram: EngramModule | None = None
        if engram_cfg is not None and index in engram_cfg.layer_ids:
            self.engram = engram_from_config(engram_cfg, D, device=device, dtype=dtype, generator=gen)
            self.engram.requires_grad_(False)

    def forward(self, x: torch.Tensor, *, rows: torch.Tensor | None = None, state: ConvState | None = None,
                cache: KVCache | None = None, max_len: int | None = None, packed: Packed | None = None
                ) -> torch.Tensor:
        """x: [B, T, D] or [B, T, M, D] (branches); with `packed`, B = 1 and T the step's chunks, packed."""
        if self.engram is not None:
            if rows is None:
                raise ValueError(f"layer {self.index} is an Engram layer and needs its rows")
            x = self.engram(x, rows, state) if packed is None else self._packed_engram(x, rows, packed)
        multi = x.dim() == 4
        h = rms_norm(x.mean(2) if multi else x, self.attn_norm, NORM_EPS)
        a = self.attn(h, cache, self.index, max_len) if packed is None else self.attn.packed(h, packed, self.index)
        x = x + (a.unsqueeze(2) if multi else a)
        h = x.mean(2) if multi else x
        f = self.ffn(rms_norm(h, self.ffn_norm, NORM_EPS))
        return x + (f.unsqueeze(2) if multi else f)

    def _packed_engram(self, x: torch.Tensor, rows: torch.Tensor, p: Packed) -> torch.Tensor:
        """The Engram module of a packed step: gating and values for all its tokens at once, then the causal
        convolution, each request with its slot's history: the one-token chunks as one batch, the longer
        chunks as another (right-padded to the longest: a causal convolution never reads the padding)."""
        rows = rows.reshape(x.shape[1], -1)
        history = p.states[self.index].buffer
        values = self.engram.values(x, rows.unsqueeze(0))[0]     # [T, M, D]
        y = torch.empty((x.shape[1], *x.shape[2:]), device=x.device, dtype=x.dtype)
        if p.single_tok.numel():
            history[p.single_slot[p.token_pos[p.single_tok] == 0]] = 0   # one-token prompts start afresh too
            v = values[p.single_tok].unsqueeze(1)                       # [S, 1, M, D]
            state = ConvState(history[p.single_slot])
            y[p.single_tok] = (v + self.engram.short_conv(v, state)).reshape(-1, *x.shape[2:])
            history[p.single_slot] = state.buffer
        if p.runs:
            y[p.run_tok] = self._runs_conv(values, history, p).reshape(-1, *x.shape[2:])
        return x + y.unsqueeze(0)

    def _runs_conv(self, values: torch.Tensor, history: torch.Tensor, p: Packed) -> torch.Tensor:
        """v + SiLU(conv(norm(v))) of the longer chunks, batched; each slot's history moves to its chunk's end."""
        e = self.engram
        lengths = torch.tensor([b - a for a, b, _, _ in p.runs], device=values.device)
        slots = torch.tensor([slot for _, _, slot, _ in p.runs], device=values.device)
        valid = torch.arange(int(lengths.max()), device=values.device)[None, :] < lengths[:, None]   # [R, L]
        v = values.new_zeros((len(p.runs), valid.shape[1], *values.shape[1:]))
        v[valid] = values[p.run_tok]
        fresh = torch.tensor([not start for _, _, _, start in p.runs], device=values.device)
        past = torch.where(fresh[:, None, None], torch.zeros_like(history[slots]), history[slots])
        out = v + e.short_conv(v, ConvState(past))
        if e.history:  # the last `history` normed values before each chunk's end: its slot's new history
            normed = rms_norm(v, e.conv_norm, CONV_NORM_EPS).reshape(*v.shape[:2], -1).to(past.dtype)
            full = torch.cat([past, normed], dim=1)                                   # [R, hist + L, C]
            at = lengths[:, None] + torch.arange(e.history, device=values.device)[None, :]
            history[slots] = torch.gather(full, 1, at[:, :, None].expand(-1, -1, full.shape[2]))
        return out[valid]


class Backbone(nn.Module):
    def __init__(self, backbone_cfg, engram_cfg=None, *, device="cpu", dtype=None, seed: int = 0,
                 moe_impl: str = "auto", grow: bool = True):
        """grow False: decode writes each step's keys over the same position, so the cache (and the attention
        over it) keeps its length, as a benchmark with a fixed-length KV cache does."""
        super().__init__()
        self.grow = grow
        device = torch.device(device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        self.cfg, self.engram_cfg = backbone_cfg, engram_cfg
        self.device, self.dtype = device, dtype
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        D = backbone_cfg.hidden_size
        self.branches = engram_cfg.branches if engram_cfg is not None else 1
        self.embed = _randn((backbone_cfg.vocab_size, D), 1.0, gen, device, dtype)
        self.layers = nn.ModuleList(DecoderLayer(i, backbone_cfg, engram_cfg, gen, device, dtype, moe_impl)
                                    for i in range(backbone_cfg.layers))
        self.final_norm = nn.Parameter(torch.ones(D, device=device, dtype=dtype), requires_grad=False)
        self.lm_head = _randn((D, backbone_cfg.vocab_size), 1 / math.sqrt(D), gen, device, dtype)

    @property
    def engram_layers(self) -> list[int]:
        return [layer.index for layer in self.layers if layer.engram is not None]

    def new_states(self, batch: int) -> dict[int, ConvState]:
        return {i: self.layers[i].engram.new_state(batch) for i in self.engram_layers}

    def new_cache(self, batch: int, capacity: int, lengths) -> KVCache:
        a = self.cfg.attention
        return KVCache.allocate(self.cfg.layers, batch, a.kv_heads, a.head_dim, capacity, lengths,
                                self.device, self.dtype)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, get_rows: Callable[[int], torch.Tensor] | None = None, *,
                cache: KVCache | None = None, states: dict[int, ConvState] | None = None,
                last_index: torch.Tensor | None = None, hook: Hook | None = None,
                max_len: int | None = None, packed: Packed | None = None) -> torch.Tensor:
        """Logits [B, vocab] of each sequence's last position (`last_index`, default T-1).

        ids [B, T] base token ids. With `cache`, T must be 1 (decode) and the cache grows by one.
        `hook(i, "start"|"end")` brackets every layer (i = layers for the LM head) for timing.
        `max_len` (decode): positions to attend, at least the longest cached length + 1; without it one
        host read of the cache lengths bounds it.
        `packed` (serving): B = 1, the step's chunks packed along T, each in its request's slot of
        packed.cache (not `cache`); `last_index` [C] then picks each chunk's last token: logits [C, vocab].
        """
        B, T = ids.shape
        x = self.embed[ids]
        if self.branches > 1:
            x = x.unsqueeze(2).expand(B, T, self.branches, x.shape[-1]).contiguous()
        if cache is not None:
            if max_len is None:
                max_len = int(cache.lengths.max().item()) + 1
            if max_len > cache.capacity:
                raise ValueError(f"KV cache full: a sequence needs {max_len} positions, capacity {cache.capacity}")
        for layer in self.layers:
            rows = None
            if layer.engram is not None:
                if get_rows is None:
                    raise ValueError(f"layer {layer.index} is an Engram layer: pass get_rows")
                rows = get_rows(layer.index)      # may block: the wait for this layer's fetch
            if hook:
                hook(layer.index, "start")
            x = layer(x, rows=rows, state=states.get(layer.index) if states else None, cache=cache,
                      max_len=max_len, packed=packed)
            if hook:
                hook(layer.index, "end")
        if hook:
            hook(len(self.layers), "start")
        if self.branches > 1:
            x = x.mean(2)
        if last_index is None:
            last = x[:, -1]
        else:
            last = x[torch.arange(B, device=x.device), last_index]
        last = rms_norm(last, self.final_norm, NORM_EPS)
        # Without an LM head the step ends at the last layer (its hidden state stands in for the logits).
        logits = last @ self.lm_head if self.cfg.lm_head else last
        if cache is not None and self.grow:
            cache.lengths += 1
        if hook:
            hook(len(self.layers), "end")
        return logits

