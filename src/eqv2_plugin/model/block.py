"""One EquiformerV2 transformer block (pre-norm attention and FFN, each residual)."""
from __future__ import annotations

import torch
from torch import nn

from eqv2_plugin.layers.dropout import ChannelDropout, GraphDropPath
from eqv2_plugin.layers.norms import make_norm
from eqv2_plugin.model.attention import EdgeAttention
from eqv2_plugin.model.ffn import FeedForward
from eqv2_plugin.model.graph import EdgeGraph


class TransformerBlock(nn.Module):
    """``x + drop(attention(norm(x)))`` then ``x + drop(ffn(norm(x)))``; ``[N, (L+1)^2, C]``."""

    def __init__(
        self,
        attention: EdgeAttention,
        ffn: FeedForward,
        norm_type: str,
        lmax: int,
        channels: int,
        drop_path_rate: float,
        proj_drop: float,
    ):
        super().__init__()
        self.attn_norm = make_norm(norm_type, lmax, channels)
        self.attention = attention
        self.ffn_norm = make_norm(norm_type, lmax, channels)
        self.ffn = ffn
        self.drop_path = GraphDropPath(drop_path_rate) if drop_path_rate > 0.0 else None
        self.proj_drop = ChannelDropout(proj_drop) if proj_drop > 0.0 else None

    def _drop(self, h: torch.Tensor, graph: EdgeGraph) -> torch.Tensor:
        if self.drop_path is not None:
            h = self.drop_path(h, graph.batch, graph.num_graphs)
        if self.proj_drop is not None:
            h = self.proj_drop(h)
        return h

    def forward(self, x: torch.Tensor, graph: EdgeGraph) -> torch.Tensor:
        x = x + self._drop(self.attention(self.attn_norm(x, graph.ops), graph), graph)
        return x + self._drop(self.ffn(self.ffn_norm(x, graph.ops)), graph)
