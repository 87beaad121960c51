"""Causal-LM perplexity on Penn Treebank with a sliding window (the Hugging Face recipe): windows
of `max_length` tokens advance by `stride`; only the tokens new to a window are scored, each with
up to max_length - stride tokens of left context. Perplexity = exp(mean next-token NLL)."""

from __future__ import annotations

import math
from pathlib import Path

from common.errors import UserError

PTB_HUB = "ptb_text_only"


class PtbError(UserError, FileNotFoundError):
    """The PTB text could not be found."""


def load_ptb(source: str, split: str = "test") -> str:
    """PTB text from a local folder ({test,valid}.txt, one sentence per line) or the Hub."""
    path = Path(source)
    if path.is_dir():
        f = path / ("valid.txt" if split == "validation" else f"{split}.txt")
        if not f.is_file():
            raise PtbError(f"{f} not found: a PTB folder holds test.txt and valid.txt "
                                    "(e.g. ../shared/data/ptb)")
        lines = [x.strip() for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
    else:
        import datasets

        try:
            lines = list(datasets.load_dataset(source, split=split)["sentence"])
        except Exception as exc:
            raise PtbError(f"could not load {source!r} from the Hub ({exc}); offline, pass "
                                    "the local folder ../shared/data/ptb") from exc
    return "\n".join(lines)


def perplexity(model, tokenizer, text: str, max_length: int = 1024, stride: int = 512,
               max_tokens: int = 0) -> dict:
    import torch

    if not 0 < stride <= max_length:
        raise ValueError("need 0 < stride <= max_length")
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if max_tokens:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("the text has fewer than 2 tokens")
    nll, n, prev_end = 0.0, 0, 0
    model.eval()
    with torch.inference_mode():
        for begin in range(0, len(ids), stride):
            end = min(begin + max_length, len(ids))
            window = ids[begin:end].unsqueeze(0)
            target = window.clone()
            target[:, : -(end - prev_end)] = -100  # context only: already scored
            count = int((target[:, 1:] != -100).sum())  # the model shifts labels by one
            if count:
                nll += float(model(window, labels=target).loss) * count
                n += count
            prev_end = end
            if end == len(ids):
                break
    return {"perplexity": math.exp(nll / n), "tokens_scored": n, "tokens": int(len(ids)),
            "max_length": max_length, "stride": stride}
