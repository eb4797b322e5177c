"""Cross-encoder reranking: each family's recipe (how a (query, document) pair becomes the ids
its authors score) and the CrossEncoder, which is to a Scorer what the Engine is to an Embedder.

Families, each as its authors run it:

- Qwen3-Reranker (a Qwen3 causal LM): the pair is written into the authors' chat template,
  `prefix + "<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {document}" + suffix`;
  the body is tokenised without special tokens and cut from its end so that prefix + body +
  suffix fit the max length (the document's tail goes first); rows are left-padded and scored on
  the last position's logits for "yes" and "no" (ids looked up from the tokenizer).
- BERT and XLM-RoBERTa sequence classification (sentence-transformers' CrossEncoder): the
  tokenizer's pair template (`[CLS] q [SEP] d [SEP]`, `<s> q </s></s> d </s>`), truncated
  longest-first to the tokenizer's model_max_length, right padding; the single label's logit.

Scores: the raw logit (Qwen3: logit(yes) - logit(no)) and its sigmoid in [0, 1], which for
Qwen3 is exactly the authors' softmax probability of "yes".
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from localrank.engine.batching import plan_batches
from localrank.engine.model_files import read_config, read_model_json
from localrank.engine.resolve import ResolvedModel
from localrank.engine.tokenizer import Encoded
from localrank.engine.types import BackendInfo, Batch, Pause, Scorer
from localrank.errors import BackendError, InvalidInput, ModelError, TooLarge

QWEN3_RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
QWEN3_RERANK_BODY = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
QWEN3_RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
# The authors' max_length in the Qwen3-Reranker README.
QWEN3_RERANK_MAX_TOKENS = 8192
# architectures[0] of config.json -> the family that scores it.
ARCHITECTURES = {
    "Qwen3ForCausalLM": "qwen3-reranker",
    "BertForSequenceClassification": "bert",
    "XLMRobertaForSequenceClassification": "xlm-roberta",
}
MODEL_TYPES = {"qwen3-reranker": "qwen3", "bert": "bert", "xlm-roberta": "xlm-roberta"}
# The checkpoint key prefix of each family's base model, and its head's weights (the same
# checkpoint layout for every backend).
PREFIXES = {"qwen3-reranker": "model.", "bert": "bert.", "xlm-roberta": "roberta."}
HEADS = {
    "bert": (
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    ),
    "xlm-roberta": (
        "classifier.dense.weight",
        "classifier.dense.bias",
        "classifier.out_proj.weight",
        "classifier.out_proj.bias",
    ),
}


@dataclass(frozen=True)
class RerankRecipe:
    family: str  # "qwen3-reranker" | "bert" | "xlm-roberta"
    padding_side: str
    pad_token_id: int
    max_tokens: int  # prefix + body + suffix (Qwen3), or the whole pair, special tokens included
    default_instruction: str | None = None
    prefix_ids: tuple[int, ...] = ()
    suffix_ids: tuple[int, ...] = ()
    yes_id: int | None = None
    no_id: int | None = None

    @property
    def method(self) -> str:
        """What /health and /info call the rerank method in force."""
        if self.family == "qwen3-reranker":
            return 'cross-encoder (Qwen3-Reranker: P("yes") at the last position)'
        return f"cross-encoder ({self.family} sequence classification: sigmoid of the logit)"


def reranker_family(model_dir: Path) -> str:
    """The cross-encoder family of a model folder, from config.json's architectures."""
    cfg, path = read_config(model_dir)
    archs = cfg.get("architectures") or []
    family = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
    if family is None or cfg.get("model_type") != MODEL_TYPES[family]:
        raise ModelError(
            f"{path}: not a supported reranker (architectures {archs}, model_type "
            f"{cfg.get('model_type')!r}); supported: Qwen3-Reranker (Qwen3ForCausalLM), BERT and "
            "XLM-RoBERTa sequence classification"
        )
    if family != "qwen3-reranker":
        labels = cfg.get("id2label") or {"0": "LABEL_0"}
        if int(cfg.get("num_labels") or len(labels)) != 1:
            raise ModelError(f"{path}: a cross-encoder with {len(labels)} labels; expected one")
    return family


def load_pair_tokenizer(model_dir: Path) -> Tokenizer:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{path}: missing (a reranker needs its tokenizer.json)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust tokenizer's own errors
        raise ModelError(f"{path}: unreadable: {e}") from e
    tok.no_padding()
    tok.no_truncation()
    return tok


def _tokenizer_max_length(model_dir: Path, cfg: dict[str, Any]) -> int:
    """What transformers' tokenizer truncates to: tokenizer_config.json's model_max_length (a
    placeholder of 1e30 means none), else the positions the model has."""
    path = model_dir / "tokenizer_config.json"
    positions = int(cfg.get("max_position_embeddings") or 512)
    if cfg.get("model_type") == "xlm-roberta":
        positions -= int(cfg.get("pad_token_id", 1)) + 1  # positions start after padding_idx
    if path.is_file():
        value = read_model_json(path).get("model_max_length")
        if isinstance(value, (int, float)) and 0 < value < 1e9:
            return int(value)
    return positions


def load_rerank_recipe(
    model_dir: Path, tokenizer: Tokenizer, *, max_tokens: int, default_instruction: str
) -> RerankRecipe:
    family = reranker_family(model_dir)
    cfg, path = read_config(model_dir)
    if family == "qwen3-reranker":
        yes, no = tokenizer.token_to_id("yes"), tokenizer.token_to_id("no")
        if yes is None or no is None:
            raise ModelError(f"{model_dir}: tokenizer has no 'yes' / 'no' token to score")
        pad = tokenizer.token_to_id("<|endoftext|>")
        if pad is None:
            raise ModelError(f"{model_dir}: tokenizer has no <|endoftext|> padding token")
        prefix = tokenizer.encode(QWEN3_RERANK_PREFIX, add_special_tokens=False).ids
        suffix = tokenizer.encode(QWEN3_RERANK_SUFFIX, add_special_tokens=False).ids
        limit = min(max_tokens, QWEN3_RERANK_MAX_TOKENS)
        if limit <= len(prefix) + len(suffix) + 8:
            raise ModelError(f"max_tokens {max_tokens} leaves no room for the reranker's template")
        return RerankRecipe(
            family,
            "left",
            pad,
            limit,
            default_instruction,
            tuple(prefix),
            tuple(suffix),
            yes,
            no,
        )
    pad_id = cfg.get("pad_token_id")
    if pad_id is None:
        raise ModelError(f"{path}: no pad_token_id")
    limit = min(max_tokens, _tokenizer_max_length(model_dir, cfg))
    return RerankRecipe(family, "right", int(pad_id), limit)


@dataclass(frozen=True)
class RerankInfo:
    """What is loaded as the reranker, read back from it."""

    model_id: str
    path: Path
    revision: str
    recipe: RerankRecipe
    backend: BackendInfo

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "path": str(self.path),
            "revision": self.revision,
            "family": self.recipe.family,
            "backend": self.backend.backend,
            "device": self.backend.device,
            "dtype": self.backend.dtype,
            "max_tokens": self.recipe.max_tokens,
            "default_instruction": self.recipe.default_instruction,
            "method": self.recipe.method,
        }


@dataclass(frozen=True)
class RerankResult:
    logits: np.ndarray  # float32 [N]
    prompt_tokens: int
    truncated: int

    @property
    def scores(self) -> np.ndarray:
        return sigmoid(self.logits)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # overflow-free


class CrossEncoder:
    """A Scorer with its tokenizer and recipe. Not thread-safe, like the Engine; `prepare` only
    reads the tokenizer (a copy of its own), so the tokeniser thread may run it meanwhile."""

    def __init__(
        self,
        resolved: ResolvedModel,
        tokenizer: Tokenizer,
        recipe: RerankRecipe,
        scorer: Scorer,
        *,
        max_batch_tokens: int = 2048,
        max_batch_size: int = 128,
    ) -> None:
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.scorer = scorer
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self._pairs = copy.deepcopy(tokenizer)
        if recipe.family != "qwen3-reranker":
            self._pairs.enable_truncation(recipe.max_tokens, strategy="longest_first")
        self.info = RerankInfo(
            resolved.model_id, resolved.path, resolved.revision, recipe, scorer.info
        )

    @property
    def dim(self) -> int:
        return 1

    def work(self, document: str) -> int:
        """What tokenising a document costs, in characters (the scheduler's slicing)."""
        return len(document)

    def prepare(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[Encoded]:
        """Each (query, document) pair's ids as the family's authors build them."""
        r = self.recipe
        if r.family == "qwen3-reranker":
            task = r.default_instruction if instruction is None else instruction
            bodies = [
                QWEN3_RERANK_BODY.format(instruction=task, query=query, document=d)
                for d in documents
            ]
            room = r.max_tokens - len(r.prefix_ids) - len(r.suffix_ids)
            out = []
            for enc in self.tokenizer.encode_batch(bodies, add_special_tokens=False):
                ids = enc.ids
                cut = len(ids) > room
                out.append(
                    Encoded(
                        [*r.prefix_ids, *ids[:room], *r.suffix_ids],
                        cut,
                        len(ids) + len(r.prefix_ids) + len(r.suffix_ids),
                    )
                )
            return out
        encodings = self._pairs.encode_batch([(query, d) for d in documents])
        return [Encoded(e.ids, bool(e.overflowing), None, type_ids=e.type_ids) for e in encodings]

    def pad(self, encoded: Sequence[Encoded]) -> Batch:
        """One padded batch, exact width (segment ids too for the encoder families)."""
        width = max(len(e.ids) for e in encoded)
        b = len(encoded)
        ids = np.full((b, width), self.recipe.pad_token_id, dtype=np.int64)
        mask = np.zeros((b, width), dtype=np.int64)
        types = None if self.recipe.family == "qwen3-reranker" else np.zeros_like(ids)
        for row, e in enumerate(encoded):
            n = len(e.ids)
            cols = slice(width - n, width) if self.recipe.padding_side == "left" else slice(0, n)
            ids[row, cols], mask[row, cols] = e.ids, 1
            if types is not None and e.type_ids is not None:
                types[row, cols] = e.type_ids
        return Batch(ids, mask, types)

    def run(self, encoded: Sequence[Encoded], pause: Pause | None = None) -> np.ndarray:
        """Raw logits [N, 1] of prepared pairs, in input order (token-budget batches)."""
        out = np.empty((len(encoded), 1), dtype=np.float32)
        plan = plan_batches(
            [len(e.ids) for e in encoded],
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=self.max_batch_size,
            bucket=False,
        )
        for indices in plan:
            logits = np.asarray(
                self.scorer.score(self.pad([encoded[i] for i in indices]), pause), np.float32
            )
            if logits.shape != (len(indices),):
                raise BackendError(f"scorer returned shape {logits.shape}, expected {len(indices)}")
            out[indices, 0] = logits
        if not np.isfinite(out).all():
            raise BackendError(
                f"the {self.info.backend.backend} reranker produced non-finite scores"
            )
        return out

    def rerank(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> RerankResult:
        check_pairs(query, documents)
        encoded = self.prepare(query, documents, instruction=instruction)
        logits = self.run(encoded)[:, 0]
        return RerankResult(
            logits, sum(len(e.ids) for e in encoded), sum(e.truncated for e in encoded)
        )

    def close(self) -> None:
        self.scorer.close()


def check_pairs(query: Any, documents: Any, *, max_inputs: int | None = None) -> None:
    """A query and a non-empty list of strings, or InvalidInput naming the field."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidInput("query must be a non-empty string", param="query")
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InvalidInput("documents must be a list of strings", param="documents")
    if not documents:
        raise InvalidInput("documents must not be empty", param="documents")
    if max_inputs is not None and len(documents) > max_inputs:
        raise TooLarge(
            f"documents has {len(documents)} items; the limit is {max_inputs}", param="documents"
        )
    for i, d in enumerate(documents):
        if not isinstance(d, str):
            raise InvalidInput(f"documents[{i}] must be a string", param="documents")
