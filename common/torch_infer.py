"""Logits of a PyTorch classifier over encoded texts (training's validation, the study)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from common.feeds import Encoded, batches


def torch_logits(model: Any, enc: Encoded, input_names: Sequence[str], batch_size: int = 64,
                 device: str = "cpu", progress: str | None = None) -> np.ndarray:
    """Logits of every example, in order (batches padded to their own longest example)."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    # Batches of similar length (then put back in order): padding to the longest of a batch in
    # dataset order costs about twice the compute on this data.
    order = np.argsort(enc.lengths(), kind="stable")
    out = []
    with torch.inference_mode():
        for b in tqdm(batches(len(enc), batch_size), desc=progress, disable=progress is None,
                      leave=False):
            feed = enc.batch(order[b].tolist(), input_names)
            t = {k: torch.from_numpy(v).to(device) for k, v in feed.items()}
            out.append(model(**t).logits.float().cpu().numpy())
    logits = np.empty_like(np.concatenate(out))
    logits[order] = np.concatenate(out)
    return logits


def torch_fn(model: Any):
    """Logits function of a PyTorch model over a numpy feed."""
    import torch

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()

    return run
