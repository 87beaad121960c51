"""Tiny random encoder classifiers of each family users fine-tune, with real tokenizers of that
family's kind, built offline from the data slice and saved with save_pretrained (no downloads,
no checked-in weights). Hidden size 64: bitsandbytes' CPU 4-bit kernels need rows of whole
64-wide blocks."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

FAMILIES = ("bert", "distilbert", "roberta", "electra", "deberta-v2")
# a family outside common/arch.py's table: its facts are discovered from its modules
OUTSIDE = ("mpnet",)
SIZES = dict(layers=2, heads=2, hidden=64, ffn=128, positions=128)


def _texts(data_dir: Path) -> list[str]:
    return [json.loads(x)["text"] for x in (data_dir / "train.jsonl").read_text().splitlines()]


def _wordpiece_vocab(texts: list[str], n: int = 400) -> list[str]:
    counts: collections.Counter[str] = collections.Counter()
    for t in texts:
        counts.update(re.findall(r"[a-z]+", t.lower()))
    letters = list("abcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + letters + \
        [w for w, _ in counts.most_common(n) if w not in letters]


def _bert_tokenizer(texts: list[str], out: Path):
    from transformers import BertTokenizerFast

    (out / "vocab.txt").write_text("\n".join(_wordpiece_vocab(texts)) + "\n")
    return BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)


def _mpnet_tokenizer(texts: list[str], out: Path):
    """MPNetTokenizerFast over a WordPiece vocab with MPNet's specials (<s>=0, <pad>=1, </s>=2)."""
    from transformers import MPNetTokenizerFast

    words = [w for w in _wordpiece_vocab(texts) if not w.startswith("[")]
    (out / "vocab.txt").write_text("\n".join(["<s>", "<pad>", "</s>", "[UNK]", "<mask>"] + words) + "\n")
    return MPNetTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)


def _roberta_tokenizer(texts: list[str], out: Path):
    """A byte-level BPE (RoBERTa's kind): <s>=0, <pad>=1, </s>=2, position ids offset by pad."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(out))
    return RobertaTokenizerFast(vocab_file=str(out / "vocab.json"), merges_file=str(out / "merges.txt"))


def _deberta_tokenizer(texts: list[str], out: Path):
    """DebertaV2TokenizerFast over a WordPiece model ([PAD]=0, [CLS]=1, [SEP]=2, as DeBERTa's)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import DebertaV2TokenizerFast

    words = _wordpiece_vocab(texts)
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return DebertaV2TokenizerFast(tokenizer_object=tok, bos_token="[CLS]", eos_token="[SEP]",
                                  unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                  cls_token="[CLS]", mask_token="[MASK]")


def build_tiny(family: str, data_dir: Path, out: Path, seed: int = 0, num_labels: int = 6) -> Path:
    """A tiny random classifier of `family` with a head of `num_labels` (a model whose head does
    not fit the task is refused by the build), its tokenizer trained on data_dir's texts."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        DebertaV2Config,
        DistilBertConfig,
        ElectraConfig,
        MPNetConfig,
        RobertaConfig,
    )

    out.mkdir(parents=True, exist_ok=True)
    texts = _texts(data_dir)
    s = SIZES
    labels = dict(num_labels=num_labels, id2label={i: f"LABEL_{i}" for i in range(num_labels)},
                  label2id={f"LABEL_{i}": i for i in range(num_labels)})
    bert_like = dict(hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                     num_attention_heads=s["heads"], intermediate_size=s["ffn"], **labels)
    if family == "bert":
        tok = _bert_tokenizer(texts, out)
        cfg = BertConfig(vocab_size=len(tok), max_position_embeddings=s["positions"], **bert_like)
    elif family == "distilbert":
        tok = _bert_tokenizer(texts, out)
        cfg = DistilBertConfig(vocab_size=len(tok), dim=s["hidden"], n_layers=s["layers"],
                               n_heads=s["heads"], hidden_dim=s["ffn"],
                               max_position_embeddings=s["positions"], **labels)
    elif family == "roberta":
        tok = _roberta_tokenizer(texts, out)
        # RoBERTa numbers positions from pad_token_id + 1: two more than the longest input
        cfg = RobertaConfig(vocab_size=len(tok), max_position_embeddings=s["positions"] + 2,
                            pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                            **bert_like)
    elif family == "electra":
        tok = _bert_tokenizer(texts, out)
        # embedding_size < hidden_size: ELECTRA's embeddings_project Linear is exercised too
        cfg = ElectraConfig(vocab_size=len(tok), embedding_size=32,
                            max_position_embeddings=s["positions"], **bert_like)
    elif family == "deberta-v2":
        tok = _deberta_tokenizer(texts, out)
        cfg = DebertaV2Config(vocab_size=len(tok), max_position_embeddings=s["positions"],
                              relative_attention=True, position_buckets=32,
                              pos_att_type=["p2c", "c2p"], type_vocab_size=0,
                              pooler_hidden_size=s["hidden"], pad_token_id=0, **bert_like)
    elif family == "mpnet":
        tok = _mpnet_tokenizer(texts, out)
        # MPNet numbers positions from pad_token_id + 1, as RoBERTa does
        cfg = MPNetConfig(vocab_size=len(tok), max_position_embeddings=s["positions"] + 2,
                          pad_token_id=1, bos_token_id=0, eos_token_id=2, **bert_like)
    else:
        raise ValueError(f"no tiny builder for {family}")
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(out)
    return out
