"""MLX backend: Metal on Apple GPUs, mlx[cpu] elsewhere (used here for parity tests).

The forward passes are our own (Qwen3 and BERT, ~100 lines each) rather than mlx-embeddings',
which NaNs left-padded Qwen3 rows (additive -inf mask) and ignores a rope_theta written only
under `rope_parameters`. mlx is imported only inside this package, and the engine imports the
package only when this backend is chosen (select.create_embedder).

  embedder.py  MLXEmbedder: device and dtype, quantisation, weight checks and loading, pooling
  families.py  model_type -> model class and checkpoint key prefix
  qwen3.py     Qwen3Model's forward        bert.py  BertModel's forward
  scorer.py    MLXScorer: Qwen3-Reranker (yes/no rows only), BERT / XLM-R cross-encoders
  generic.py   MLXGenericEmbedder: architectures without a native forward, through
               mlx-embeddings' models (imported by select.create_embedder only then)
  layers.py    what the families share: the MLXModel contract and the attention mask
"""

from __future__ import annotations

from localrank.engine.mlx.embedder import MLXEmbedder
from localrank.engine.mlx.families import FAMILIES, Family
from localrank.engine.mlx.layers import Mask, MLXModel, attention_mask
from localrank.engine.mlx.scorer import MLXScorer

__all__ = [
    "FAMILIES",
    "Family",
    "MLXEmbedder",
    "MLXModel",
    "MLXScorer",
    "Mask",
    "attention_mask",
]
