"""PyTorch backend on mps / cuda / cpu: our own Qwen3 and BERT forwards over safetensors weights.

transformers is the reference, never a runtime dependency: its modeling modules cost 2.5-5 s of
cold start. torch is imported only inside this package, and the engine imports the package only
when this backend is chosen (select.create_embedder).

  embedder.py  TorchEmbedder: load, check, cast and move the weights; run; pool
  families.py  model_type -> forward class, expected weight shapes, checkpoint key prefix
  qwen3.py     Qwen3Model's forward        bert.py  BertModel's forward
  scorer.py    TorchScorer: Qwen3-Reranker (yes/no rows only), BERT / XLM-R cross-encoders
  layers.py    what the families share: the TorchModel contract, attention, masks, packing,
               RMSNorm, RoPE rotation
"""

from __future__ import annotations

from localrank.engine.torch.embedder import TorchEmbedder, default_dtype, device_available, pool
from localrank.engine.torch.families import FAMILIES, Family
from localrank.engine.torch.layers import TorchModel
from localrank.engine.torch.scorer import TorchScorer

__all__ = [
    "FAMILIES",
    "Family",
    "TorchEmbedder",
    "TorchModel",
    "TorchScorer",
    "default_dtype",
    "device_available",
    "pool",
]
