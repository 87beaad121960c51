"""What a saved checkpoint says about its inputs, read one way everywhere: the tokenizer saved
with it, the max length and ONNX input names its recipe.json records. Also where the baseline
lives in an artifacts folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.data import Split
from common.feeds import Encoded, check_pairs, encode
from common.manifest import ArtifactError, Manifest


def read_recipe(ckpt: Path) -> dict[str, Any]:
    path = Path(ckpt) / "recipe.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing: {ckpt} is not a checkpoint this project wrote; "
                            "rebuild it with `make engines`") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is corrupt ({exc.msg}); rebuild it with `make engines`") from None


def trained_with(meta: dict[str, Any], field: str, default: Any = None) -> Any:
    """A field of the config a checkpoint was trained with (recipe.json's `config` is a tagged
    recipe: {"type", "fields"})."""
    cfg = meta.get("config")
    fields = cfg.get("fields") if isinstance(cfg, dict) else None
    return fields.get(field, default) if isinstance(fields, dict) else default


@dataclass(frozen=True)
class TextEncoder:
    """Texts (or text pairs) -> unpadded token ids, exactly as the baseline was trained
    (tokenizer, max length, single texts or pairs)."""

    tokenizer: Any
    max_length: int
    input_names: tuple[str, ...]
    pair: bool = False  # a pair task: every text comes with its second text

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> Encoded:
        texts, second = check_pairs(texts, pairs, self.pair)
        return encode(self.tokenizer, texts, self.max_length, second)

    def encode_split(self, split: Split) -> Encoded:
        return self.encode(split.texts, split.pairs)

    @classmethod
    def from_checkpoint(cls, ckpt: Path) -> TextEncoder:
        from transformers import AutoTokenizer  # lazy: heavy

        meta = read_recipe(ckpt)
        return cls(AutoTokenizer.from_pretrained(str(ckpt)), int(meta["max_length"]),
                   tuple(meta["input_names"]), bool(meta.get("task", {}).get("pair", False)))


def baseline_dir(artifacts: Path) -> Path:
    """The baseline checkpoint of an artifacts folder, verified like every artifact read (its
    tokenizer, recipe.json and max length are what every variant encodes with: an edited or
    half-swapped folder is refused, not scored)."""
    return Manifest(Path(artifacts)).verify("baseline")


def baseline_meta(artifacts: Path) -> dict[str, Any]:
    """recipe.json of the baseline: max_length and input names every variant shares."""
    return read_recipe(baseline_dir(artifacts))


def baseline_encoder(artifacts: Path) -> TextEncoder:
    return TextEncoder.from_checkpoint(baseline_dir(artifacts))
