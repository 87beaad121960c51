"""What a served request does, independent of the server: decode and check the texts (and, for
a pair task, the second texts), tokenize with the variant's own tokenizer and max length, run the
variant's Runner, return label / id / probabilities under the task's label names. The Triton
Python-backend model (deploy/triton_model.py) is a thin shell around it, so this logic is tested
without a server and the server answers exactly what the evaluator scores.

Over-long texts are truncated to the model's max length (keeping [CLS] ... [SEP]; a pair loses
tokens from its longer text), like the evaluator does; the count of truncated inputs is returned
with each batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.feeds import InputError, check_texts
from common.probs import softmax

MAX_TEXT_BYTES = 1 << 20  # 1 MiB per text: accepted (and truncated); anything larger is refused


def decode_texts(values: Sequence[object], what: str = "text") -> list[str]:
    """Texts from a Triton BYTES tensor (numpy object array of bytes). Raises InputError with a
    message meant for the client: empty, blank, not UTF-8, too large."""
    out: list[object] = []
    for i, v in enumerate(values):
        if isinstance(v, np.ndarray):  # a [n, 1] tensor arrives as rows of one element
            if v.size != 1:
                raise InputError(f"{what} #{i}: each row must hold exactly one text, got {v.size}")
            v = v.reshape(-1)[0]
        if isinstance(v, bytes | bytearray):
            if len(v) > MAX_TEXT_BYTES:
                raise InputError(f"{what} #{i} is {len(v)} bytes; the limit is {MAX_TEXT_BYTES} "
                                 "(longer texts are truncated to the model's max length anyway)")
            try:
                v = bytes(v).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{what} #{i} is not valid UTF-8 ({exc.reason} at byte "
                                 f"{exc.start})") from None
        out.append(v)
    return check_texts(out, what)  # the evaluator's checks: a string, not blank, at least one


@dataclass(frozen=True)
class Prediction:
    label_ids: np.ndarray  # int64 [n]
    probs: np.ndarray  # float32 [n, number of labels]
    truncated: int
    names: tuple[str, ...]  # the task's label names in id order

    @property
    def labels(self) -> list[str]:
        return [self.names[i] for i in self.label_ids]


class ClassifierService:
    """One variant, loaded once: `predict(texts[, pairs])` -> Prediction. Not thread-safe by
    design: Triton gives each model instance its own process."""

    def __init__(self, artifacts: str | Path, backend: str, variant: str, threads: int = 0,
                 device: str = "cpu", spin: bool = True):
        from common.checkpoint import baseline_encoder
        from common.task import task_of
        from deploy.factories import make_runner

        artifacts = Path(artifacts)
        self.encoder = baseline_encoder(artifacts)
        self.labels = task_of(artifacts).labels
        self.pair = self.encoder.pair
        self.runner = make_runner(backend, variant, artifacts, threads or None, device, spin)
        self.runner.load()

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> Prediction:
        enc = self.encoder.encode(texts, pairs)
        logits = self.runner.infer(enc.batch(list(range(len(enc))), self.runner.input_names))
        if not np.isfinite(logits).all():
            raise RuntimeError("the model produced non-finite logits")
        return Prediction(logits.argmax(-1).astype(np.int64), softmax(logits).astype(np.float32),
                          enc.truncated, self.labels)

    def close(self) -> None:
        self.runner.close()
