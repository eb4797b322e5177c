"""The model authors' recipes, run through transformers / sentence-transformers.

Every backend is checked against these. They are written the way the Qwen3-Embedding model card
writes them, not by reusing any localrank code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModel, AutoTokenizer

_cache: dict[str, tuple[object, object]] = {}


def get_detailed_instruct(task_description: str, query: str) -> str:
    return f"Instruct: {task_description}\nQuery:{query}"


def last_token_pool(last_hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[torch.arange(batch_size), sequence_lengths]


def qwen3_reference(
    model_dir: Path, texts: list[str], max_length: int = 8192, dtype: torch.dtype = torch.float32
) -> np.ndarray:
    """Qwen3-Embedding model card recipe: left padding, last-token pooling, L2 normalisation.
    `dtype`: the dtype transformers loads and runs the model in (the recipe as is)."""
    key = f"{model_dir}:{dtype}"
    if key not in _cache:
        tok = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
        model = AutoModel.from_pretrained(str(model_dir), dtype=dtype).eval()
        _cache[key] = (tok, model)
    tokenizer, model = _cache[key]
    batch = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=max_length,  # type: ignore[operator]
        return_tensors="pt",
    )
    with torch.inference_mode():
        outputs = model(**batch)  # type: ignore[operator]
    embeddings = last_token_pool(outputs.last_hidden_state, batch["attention_mask"])
    return F.normalize(embeddings.float(), p=2, dim=1).numpy()


def qwen3_reference_ids(
    model_dir: Path, texts: list[str], max_length: int = 8192
) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    return [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]


def sentence_transformers_reference(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    key = "st:" + str(model_dir)
    if key not in _cache:
        _cache[key] = (SentenceTransformer(str(model_dir), device="cpu"), None)
    model = _cache[key][0]
    return np.asarray(model.encode(texts, normalize_embeddings=True))  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------- rerankers

QWEN3_RERANK_DEFAULT_TASK = (
    "Given a web search query, retrieve relevant passages that answer the query"
)


def qwen3_reranker_reference(
    model_dir: Path,
    pairs: list[tuple[str, str]],
    *,
    instruction: str | None = None,
    max_length: int = 8192,
) -> np.ndarray:
    """The Qwen3-Reranker README's transformers code, as written there: P("yes")."""
    from transformers import AutoModelForCausalLM

    key = f"qwen3-reranker:{model_dir}"
    if key not in _cache:
        tok = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        _cache[key] = (tok, model)
    tokenizer, model = _cache[key]
    token_false_id = tokenizer.convert_tokens_to_ids("no")  # type: ignore[attr-defined]
    token_true_id = tokenizer.convert_tokens_to_ids("yes")  # type: ignore[attr-defined]
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
        'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
        "<|im_end|>\n<|im_start|>user\n"
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)  # type: ignore[attr-defined]
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)  # type: ignore[attr-defined]

    def format_instruction(instruction: str | None, query: str, doc: str) -> str:
        if instruction is None:
            instruction = QWEN3_RERANK_DEFAULT_TASK
        return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"

    texts = [format_instruction(instruction, q, d) for q, d in pairs]
    inputs = tokenizer(  # type: ignore[operator]
        texts,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
    inputs = tokenizer.pad(  # type: ignore[attr-defined]
        inputs, padding=True, return_tensors="pt", max_length=max_length
    )
    with torch.inference_mode():
        batch_scores = model(**inputs).logits[:, -1, :]  # type: ignore[operator]
        true_vector = batch_scores[:, token_true_id]
        false_vector = batch_scores[:, token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().numpy()


def cross_encoder_reference(
    model_dir: Path, pairs: list[tuple[str, str]], *, activation: bool = True
) -> np.ndarray:
    """sentence-transformers' CrossEncoder.predict: the sigmoid of the logit (num_labels=1), or
    the raw logit with `activation=False`."""
    from sentence_transformers import CrossEncoder

    key = f"ce:{model_dir}"
    if key not in _cache:
        _cache[key] = (CrossEncoder(str(model_dir), device="cpu"), None)
    model = _cache[key][0]
    kwargs = {} if activation else {"activation_fn": torch.nn.Identity()}
    return np.asarray(model.predict(pairs, **kwargs), dtype=np.float64)  # type: ignore[attr-defined]
