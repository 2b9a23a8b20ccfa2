"""Token-embedding parts."""

import torch
from torch import nn


class ScaledWordEmbedding(nn.Embedding):
    """Token embeddings multiplied by a fixed scale (Gemma: sqrt(hidden_size)).

    The scale is cast to the weights' dtype before the product, as Gemma does: in bfloat16
    sqrt(3072) = 55.43 becomes 55.5, and checkpoints trained that way expect it. It is a
    non-persistent float32 buffer, never stored in checkpoints and recomputed whenever the module
    moves or changes dtype (``_apply``), so it stays exact after ``.to(bfloat16)``, ``to_empty`` and
    loading from the meta device. Only token ids are scaled: ``inputs_embeds`` given to the model
    are used as they are.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        embed_scale: float = 1.0,
    ):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.scalar_embed_scale = float(embed_scale)
        self.register_buffer("embed_scale", self.compute_embed_scale(), persistent=False)

    def compute_embed_scale(self, device: torch.device | None = None) -> torch.Tensor:
        return torch.tensor(self.scalar_embed_scale, dtype=torch.float32, device=device)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.embed_scale = self.compute_embed_scale(self.embed_scale.device)
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.embed_scale.to(self.weight.dtype)
