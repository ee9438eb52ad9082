"""The transformer encoder: weight-normalised convolutional positional embedding (centred or causal),
self-attention with an additive bias and a key/value cache, post-LN / pre-LN blocks; and the chunk
attention mask of streaming models as a bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import W2V2Config
from .functional import activation

__all__ = [
    "WeightNormConv1d",
    "PositionalConvEmbedding",
    "SelfAttention",
    "FeedForward",
    "EncoderLayer",
    "Encoder",
    "chunk_attention_allowed",
    "bias_from_allowed",
]


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d with weight normalisation over the kernel axis (``weight_g``/``weight_v``, dim=2)."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(channels, channels, kernel, groups=groups)
        v = conv.weight.detach().clone()
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(conv.bias.detach().clone())
        self.groups = groups
        self.kernel = kernel

    def weight(self) -> Tensor:
        if torch.is_grad_enabled() and (self.weight_v.requires_grad or self.weight_g.requires_grad):
            return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        # inference: reuse the normalised weight while the parameters are unchanged
        key = (
            self.weight_v._version,
            self.weight_g._version,
            self.weight_v.data_ptr(),
            self.weight_g.data_ptr(),
            self.weight_v.dtype,
            self.weight_v.device,
        )
        cached = self.__dict__.get("_cached")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                w = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
            self.__dict__["_cached"] = (key, w)
            return w
        return cached[1]

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, groups=self.groups)


class PositionalConvEmbedding(nn.Module):
    """Convolutional relative positional embedding: GELU(conv(x)), centred or causal (left-padded)."""

    def __init__(self, cfg: W2V2Config):
        super().__init__()
        self.conv = WeightNormConv1d(cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups)
        self.kernel = cfg.num_conv_pos_embeddings
        self.act = activation(cfg.feat_extract_activation)

    def forward(self, x: Tensor, causal: bool = False, context: Tensor | None = None) -> Tensor:
        """x [B,T,D] -> [B,T,D]. Causal mode uses ``context`` [B,K-1,D] (previous inputs) or zeros.

        T = 0 (audio shorter than one frame) gives an empty output: the padded input would be
        shorter than the kernel (the causal K-1 padding, or an odd centred kernel's)."""
        if not torch.jit.is_tracing() and x.shape[1] == 0:
            return torch.zeros_like(x)
        h = x.transpose(1, 2)
        k = self.kernel
        if causal:
            if context is None:
                h = F.pad(h, (k - 1, 0))
            else:
                h = torch.cat([context.transpose(1, 2), h], dim=2)
        else:
            # centred "same" conv; even kernels drop the last output, as wav2vec 2.0 does
            h = F.pad(h, (k // 2, k // 2))
        h = self.conv(h)
        if not causal and k % 2 == 0:
            h = h[:, :, :-1]
        return self.act(h).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout

    def forward(
        self, x: Tensor, bias: Tensor | None = None, past_kv: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B,T,D]; ``bias`` additive [B|1,1,T,Tk]; ``past_kv`` cached keys/values [B,H,Tp,dh].

        Returns the output and the (new-frame) keys/values [B,H,T,dh] for a streaming cache."""
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        kv = (k, v)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        p = self.dropout if self.training else 0.0
        if bias is not None:
            bias = bias.to(q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return self.out_proj(o.transpose(1, 2).reshape(b, t, d)), kv


class FeedForward(nn.Module):
    def __init__(self, cfg: W2V2Config):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)
        self.intermediate_dropout = nn.Dropout(cfg.activation_dropout)
        self.output_dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.intermediate_dropout(self.act(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """Transformer block; ``stable`` = pre-LN (large/lv60 layout), else post-LN (base layout)."""

    def __init__(self, cfg: W2V2Config):
        super().__init__()
        self.attention = SelfAttention(cfg.hidden_size, cfg.num_attention_heads, cfg.attention_dropout)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.stable = cfg.do_stable_layer_norm

    def forward(
        self, x: Tensor, bias: Tensor | None = None, past_kv: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if self.stable:
            a, kv = self.attention(self.layer_norm(x), bias, past_kv)
            x = x + self.dropout(a)
            x = x + self.feed_forward(self.final_layer_norm(x))
        else:
            a, kv = self.attention(x, bias, past_kv)
            x = self.layer_norm(x + self.dropout(a))
            x = self.final_layer_norm(x + self.feed_forward(x))
        return x, kv


class Encoder(nn.Module):
    def __init__(self, cfg: W2V2Config):
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.stable = cfg.do_stable_layer_norm

    def embed(self, x: Tensor, causal: bool, context: Tensor | None = None) -> Tensor:
        """Add the positional embedding (and post-LN models' input layer norm): hidden_states[0]."""
        x = x + self.pos_conv_embed(x, causal=causal, context=context)
        if not self.stable:
            x = self.layer_norm(x)
        return self.dropout(x)

    def finish(self, x: Tensor) -> Tensor:
        """Final layer norm of pre-LN models (identity for post-LN)."""
        return self.layer_norm(x) if self.stable else x


# --------------------------------------------------------------------------------------------------
# attention masks
# --------------------------------------------------------------------------------------------------
def chunk_attention_allowed(
    t: int, chunk: int, left_chunks: int | None, device=None, offset: int = 0, key_len: int | None = None
) -> Tensor:
    """[T, Tk] bool: query frame i (absolute ``offset + i``) may attend key j (absolute ``offset + Tk' + j``
    with keys ending at the same place as queries) when its chunk is the same or at most ``left_chunks``
    earlier (all earlier chunks when None)."""
    key_len = t if key_len is None else key_len
    q = torch.arange(t, device=device) + offset
    k = torch.arange(key_len, device=device) + offset + t - key_len
    qc = torch.div(q, chunk, rounding_mode="floor")[:, None]
    kc = torch.div(k, chunk, rounding_mode="floor")[None, :]
    allowed = kc <= qc
    if left_chunks is not None:
        allowed = allowed & (kc >= qc - left_chunks)
    return allowed


def bias_from_allowed(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive attention bias: 0 where allowed, the dtype's minimum elsewhere (no NaN on empty rows)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
