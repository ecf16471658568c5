"""The thin layers AnyGPT trains between frozen models (NExT-GPT's shapes; docs/architecture.md).

Attribute names follow NExT-GPT's `TextFcLayer` (fc, tfm, model, query_embs) so that its
released checkpoints map onto these modules key for key.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence


class InputProjector(nn.Module):
    """One encoder embedding -> one LLM token embedding (NExT-GPT: Linear(1024 -> 4096))."""

    def __init__(self, in_dim: int, llm_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, llm_dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:  # [N, in_dim] -> [N, llm_dim]
        return self.proj(embeddings)


class OutputProjector(nn.Module):
    """Signal-token states -> a decoder's conditioning (`prompt_embeds` of shape [tokens, out_dim]).

    Input at each token it reads is the LLM's last-layer hidden state plus its input embedding:
    the signal tokens (NExT-GPT), or the reply's words up to the run's end with them
    (`ProjectorSettings.reads`). A transformer encoder reads those; its decoder reads `tokens`
    learnable queries, so the output length is the decoder's (77 for SD) whatever it reads.

    `pool_from` > 0 (a decoder conditioned on one pooled sentence vector, `tokens` 1): the queries
    write `pool_from` token states of the decoder's text encoder, zero at its padding, and the output
    is their sum L2-normalised, which is how the decoder pools its own (mean over the real tokens,
    normalised: MiniLM's sentence embedding). Word by word, a request of an attribute pair the fit
    never saw is composed from states it did see (README, "A pooled sound conditioning").
    """

    def __init__(self, llm_dim: int, tokens: int, out_dim: int, *, d_model: int = 512, heads: int = 4,
                 encoder_layers: int = 4, decoder_layers: int = 4, feedforward: int = 2048, pool_from: int = 0):
        super().__init__()
        if pool_from and tokens != 1:
            raise ValueError(f"a pooled projector writes one vector (tokens 1), got tokens {tokens}")
        self.tokens, self.out_dim, self.pool_from = tokens, out_dim, pool_from
        self.fc = nn.Linear(llm_dim, d_model)
        self.tfm = nn.Transformer(d_model=d_model, nhead=heads, num_encoder_layers=encoder_layers,
                                  num_decoder_layers=decoder_layers, dim_feedforward=feedforward,
                                  dropout=0.0, batch_first=True, norm_first=True)
        self.model = nn.Linear(d_model, out_dim)
        self.query_embs = nn.Parameter(torch.randn(1, pool_from or tokens, d_model) * 0.02)

    def forward(self, hidden: torch.Tensor, input_embeds: torch.Tensor,
                padding: torch.Tensor | None = None) -> torch.Tensor:
        """hidden, input_embeds: [B, n, llm_dim] -> [B, tokens, out_dim]. `padding` [B, n]: True where
        a row is padded (rows of different lengths); None when every position is real."""
        x = self.token_states(hidden, input_embeds, padding)
        return nn.functional.normalize(x.sum(1, keepdim=True), dim=-1) if self.pool_from else x

    def token_states(self, hidden: torch.Tensor, input_embeds: torch.Tensor,
                     padding: torch.Tensor | None = None) -> torch.Tensor:
        """What the queries write, [B, pool_from or tokens, out_dim]: the conditioning itself, or the
        token states a pooled projector sums (what its fit compares with the text encoder's)."""
        x = self.fc(hidden + input_embeds)
        if padding is not None and not bool(padding.any()):
            padding = None
        x = self.tfm(x, self.query_embs.expand(x.shape[0], -1, -1), src_key_padding_mask=padding,
                     memory_key_padding_mask=padding)
        return self.model(x)


def set_dropout(module: nn.Module, p: float) -> None:
    """Set the dropout of every layer of `module` (its Dropout modules and attention weights) to `p`.

    A fitting option, not part of the saved model: dropout acts only in training, and NExT-GPT's
    projector shape has none. It helps a fit compose attribute pairs the LLM never wrote in training
    (README, "Dropout in the projector's fit")."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    for layer in module.modules():
        if isinstance(layer, nn.Dropout):
            layer.p = p
        elif isinstance(layer, nn.MultiheadAttention):
            layer.dropout = p


def pad_rows(hidden: Sequence[torch.Tensor], embeds: Sequence[torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """[n_i, H] states and input embeddings -> [B, n, H] each, right-padded with zeros, and the padding
    mask [B, n] (True where padded; None when all rows are as long)."""
    lengths = torch.tensor([len(h) for h in hidden])
    h = pad_sequence([x.float() for x in hidden], batch_first=True)
    e = pad_sequence([y.float() for y in embeds], batch_first=True)
    if bool((lengths == lengths[0]).all()):
        return h, e, None
    return h, e, torch.arange(h.shape[1], device=h.device)[None] >= lengths.to(h.device)[:, None]
