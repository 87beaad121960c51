"""Architecture facts, in one place: per encoder family, the names of its Linears (Q, K, V,
attention output, feed-forward), its layer stack, its classification head, which inputs it
takes, and what ONNX Runtime's fusion and our QAT can do with it. Sizes (hidden, heads, layers)
are read through transformers' config objects, never from the raw config.json (DistilBERT says
`dim` / `n_heads` there; its config object maps them to hidden_size / num_attention_heads).

Code elsewhere asks this module (`family_of`, `model_spec`, `body_linears`), never a BERT
attribute path. The table is what optimum's per-architecture OnnxConfig and ModelOpt's
registries keep; `supported_stages()` turns it into the README's families x stages table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.errors import UserError


class UnsupportedModel(UserError, ValueError):
    """A model family this toolchain has no facts for."""


@dataclass(frozen=True)
class Family:
    model_type: str  # transformers' config.model_type
    layers: str  # the layer stack, relative to model.base_model
    query: str  # Linear names inside one layer (last path components)
    key: str
    value: str
    attention_out: str  # relative to the layer: "attention.output.dense"
    ffn: tuple[str, ...]  # feed-forward Linears, relative to the layer
    head: tuple[str, ...]  # classification-head modules kept full precision (and trained by QLoRA)
    # token_type_ids is fed when the family uses it and the config has a type vocabulary
    # (RoBERTa's single type and DistilBERT's none are left out, as optimum does).
    token_types: bool
    # the self-attention module (relative to the layer) whose eager forward computes the scores
    # with exactly two activation x activation torch.matmul calls (Q.K^T, softmax.V); None where
    # the family computes attention otherwise (DeBERTa's disentangled attention): QAT then
    # quantizes the Linears only and says so.
    attention_matmuls: str | None
    # ONNX Runtime transformers optimizer model_type that fuses this family; None + reason when
    # it has no fusion for it (the fused FP32 and dynamic-fused variants are then skipped).
    ort_fusion: str | None
    ort_fusion_why_not: str = ""
    # the TorchScript export holds If/Loop subgraphs (DeBERTa-v2's relative-position code):
    # Optimum's static quantizer refuses such graphs ("not supported for models with subgraphs")
    onnx_subgraphs: bool = False
    aliases: tuple[str, ...] = field(default=())
    # found by looking at the model's modules (a family outside the table: discover_family)
    discovered: bool = False


_BERT_LIKE = dict(layers="encoder.layer", query="attention.self.query", key="attention.self.key",
                  value="attention.self.value", attention_out="attention.output.dense",
                  ffn=("intermediate.dense", "output.dense"), attention_matmuls="attention.self")

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("bert", head=("pooler", "classifier"), token_types=True, ort_fusion="bert",
           **_BERT_LIKE),  # type: ignore[arg-type]
    Family("roberta", head=("classifier",), token_types=False, ort_fusion="bert",
           aliases=("xlm-roberta", "camembert"), **_BERT_LIKE),  # type: ignore[arg-type]
    Family("electra", head=("classifier",), token_types=True, ort_fusion="bert",
           **_BERT_LIKE),  # type: ignore[arg-type]
    Family("distilbert", layers="transformer.layer", query="attention.q_lin",
           key="attention.k_lin", value="attention.v_lin", attention_out="attention.out_lin",
           ffn=("ffn.lin1", "ffn.lin2"), head=("pre_classifier", "classifier"),
           token_types=False, attention_matmuls="attention", ort_fusion="bert"),
    Family("deberta-v2", layers="encoder.layer", query="attention.self.query_proj",
           key="attention.self.key_proj", value="attention.self.value_proj",
           attention_out="attention.output.dense", ffn=("intermediate.dense", "output.dense"),
           head=("pooler", "classifier"), token_types=True, attention_matmuls=None,
           # measured (onnxruntime 1.32): optimize_model(model_type="bert") fuses no Attention in a
           # DeBERTa-v2 export
           ort_fusion=None, ort_fusion_why_not="ONNX Runtime's transformers optimizer has no "
           "fusion for DeBERTa's disentangled attention", onnx_subgraphs=True),
)}
for _f in list(FAMILIES.values()):
    for _a in _f.aliases:
        FAMILIES[_a] = _f


_DISCOVERED: dict[str, Family] = {}


def family_of(config: Any) -> Family:
    """The family of a transformers config object (or of a model, through its .config): from the
    table, or, for a model_type outside it, discovered from the model's own modules."""
    config = getattr(config, "config", config)
    mt = str(getattr(config, "model_type", None))
    if mt in FAMILIES:
        return FAMILIES[mt]
    if mt not in _DISCOVERED:
        _DISCOVERED[mt] = discover_family(config)
    return _DISCOVERED[mt]


def family_by_type(model_type: str) -> Family:
    """A family by model_type: the table's, or one discovered earlier in this process."""
    fam = FAMILIES.get(model_type) or _DISCOVERED.get(model_type)
    if fam is None:
        raise UnsupportedModel(f"model_type {model_type!r}: no facts yet (load its config first)")
    return fam


def discover_family(config: Any) -> Family:
    """The facts of an encoder family outside the table, read off the model built from `config`
    on the meta device (no weights): the layer stack is the ModuleList of num_hidden_layers
    layers; in a layer, the first four Linears under an attention module are Q, K, V and the
    attention output, the Linears after them the feed-forward; the head is what the classifier
    model holds besides its base model. Stages that need facts discovery cannot give (ONNX
    Runtime's attention fusion, QAT's attention matmuls) are skipped with the reason."""
    import inspect

    import torch
    from transformers import AutoModelForSequenceClassification

    mt = getattr(config, "model_type", None)
    try:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
    except Exception as exc:  # noqa: BLE001 - transformers raises ValueError/KeyError/...
        raise UnsupportedModel(f"model_type {mt!r} has no sequence-classification model in "
                               f"transformers ({type(exc).__name__}: {exc})") from None
    base = model.base_model
    n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    stack = next((name for name, m in base.named_modules()
                  if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers and n_layers), None)
    if stack is None:
        raise UnsupportedModel(f"model_type {mt!r}: no stack of {n_layers} layers found; add its "
                               "facts to common/arch.py:FAMILIES")
    layer = base.get_submodule(stack)[0]
    linears = [n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
    attn = [n for n in linears if "att" in n.split(".")[0].lower() or ".att" in n.lower()]
    if len(attn) < 4 or len(linears) < 6:
        raise UnsupportedModel(f"model_type {mt!r}: its layers' Linears {linears} do not read as "
                               "Q, K, V, attention output and a feed-forward; add its facts to "
                               "common/arch.py:FAMILIES")
    q, k, v, o = attn[:4]
    ffn = tuple(n for n in linears[linears.index(o) + 1:])
    head = tuple(n for n, _ in model.named_children() if n != model.base_model_prefix)
    takes_types = "token_type_ids" in inspect.signature(type(model).forward).parameters
    return Family(str(mt), layers=stack, query=q, key=k, value=v, attention_out=o, ffn=ffn,
                  head=head, token_types=takes_types, attention_matmuls=None, ort_fusion=None,
                  ort_fusion_why_not=f"model_type {mt} is outside the families table: ONNX "
                  "Runtime's attention fusion is not known to apply to it", discovered=True)


@dataclass(frozen=True)
class ModelSpec:
    """The facts of one model: family + sizes from its config object + the inputs it takes."""

    model_type: str
    hidden_size: int
    num_heads: int
    num_layers: int
    input_names: tuple[str, ...]

    @property
    def family(self) -> Family:
        return family_by_type(self.model_type)


def input_names(config: Any) -> tuple[str, ...]:
    config = getattr(config, "config", config)
    fam = family_of(config)
    names = ["input_ids", "attention_mask"]
    if fam.token_types and int(getattr(config, "type_vocab_size", 0) or 0) > 0:
        names.append("token_type_ids")
    return tuple(names)


def model_spec(config: Any) -> ModelSpec:
    config = getattr(config, "config", config)
    fam = family_of(config)
    return ModelSpec(fam.model_type, int(config.hidden_size), int(config.num_attention_heads),
                     int(config.num_hidden_layers), input_names(config))


def load_spec(path: Any) -> ModelSpec:
    """The spec of a saved model folder (or Hub id), read through AutoConfig."""
    from transformers import AutoConfig

    from common.modelsource import from_pretrained

    return model_spec(from_pretrained(AutoConfig, path))


def layer_stack(model: Any) -> Any:
    """The ModuleList of transformer layers of a loaded model."""
    return model.base_model.get_submodule(family_of(model).layers)


def body_linears(model: Any) -> dict[str, list[str]]:
    """Qualified names of the layers' Linears, by role: query, key, value, attention_out, ffn.
    The head (pooler, classifier) and anything outside the layer stack are not in it."""
    fam = family_of(model)
    prefix = f"{model.base_model_prefix}.{fam.layers}"
    roles: dict[str, list[str]] = {"query": [], "key": [], "value": [], "attention_out": [], "ffn": []}
    for i in range(len(layer_stack(model))):
        p = f"{prefix}.{i}."
        roles["query"].append(p + fam.query)
        roles["key"].append(p + fam.key)
        roles["value"].append(p + fam.value)
        roles["attention_out"].append(p + fam.attention_out)
        roles["ffn"] += [p + f for f in fam.ffn]
    return roles


def all_body_linears(model: Any) -> list[str]:
    """Every nn.Linear inside the layer stack (the table's names, checked against the model)."""
    import torch

    r = body_linears(model)
    names = [n for role in ("query", "key", "value", "attention_out", "ffn") for n in r[role]]
    found = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [n for n in names if n not in found]
    if missing:
        raise UnsupportedModel(f"{type(model).__name__} lacks Linear(s) {missing[:3]} that "
                               f"common/arch.py expects for model_type {family_of(model).model_type}")
    return names


def lora_targets(model: Any, which: str) -> list[str]:
    """peft target_modules for `attention` (Q, K, V) or `attention+ffn` (every layer Linear), as
    qualified names of the loaded model (exact matches: no suffix can catch a head Linear)."""
    r = body_linears(model)
    if which == "attention":
        return r["query"] + r["key"] + r["value"]
    if which == "attention+ffn":
        return all_body_linears(model)
    raise UserError(f"LoRA targets must be attention or attention+ffn, not {which!r}")


# --- what each family gets from each stage (the README's families x stages table) -------------

STAGE_COLUMNS = ("baseline + ONNX", "fused FP32 (ORT)", "dynamic INT8", "dynamic INT8 fused",
                 "static PTQ", "student", "QAT", "QLoRA", "Optimum rows", "TensorRT")


def skipped_steps(model_type: str) -> dict[str, str]:
    """The `make engines` steps this family cannot build, with the one-line reason the pipeline
    prints and records; the steps made from them are skipped in turn (engines.pipeline names
    their source). Machine-dependent skips, such as TensorRT, are not family facts."""
    fam = family_by_type(model_type)
    out = {}
    if not fam.ort_fusion:  # the baseline's and the student's fused graphs
        out["onnx-fp32-fused"] = out["onnx-student-fused"] = fam.ort_fusion_why_not
    if fam.onnx_subgraphs:
        out["onnx-optimum-static"] = OPTIMUM_SUBGRAPHS
    return out


OPTIMUM_SUBGRAPHS = ("Optimum's static quantizer refuses graphs with subgraphs (this family's "
                     "export has If nodes)")


def stage_support(model_type: str) -> dict[str, str]:
    fam = FAMILIES[model_type]
    fused = "yes" if fam.ort_fusion else f"skipped: {fam.ort_fusion_why_not}"
    qat = ("yes (every layer Linear + both attention matmuls)" if fam.attention_matmuls else
           "yes (every layer Linear; attention matmuls stay FP32: not two plain matmuls)")
    return {"baseline + ONNX": "yes", "fused FP32 (ORT)": fused, "dynamic INT8": "yes",
            "dynamic INT8 fused": fused,
            "static PTQ": "yes (ptq; ptq-fused: " + ("yes)" if fam.ort_fusion else
                                                   "skipped with the fused graph)"),
            "student": "yes (FP32 ONNX; fused and static INT8: " + ("yes)" if fam.ort_fusion else
                                                                 "skipped with the fused graph)"),
            "QAT": qat,
            "Optimum rows": ("exporter and dynamic; static skipped: " + OPTIMUM_SUBGRAPHS
                             if fam.onnx_subgraphs else "exporter, dynamic, static"),
            "QLoRA": "yes (NF4 base, LoRA on attention or attention+FFN)",
            "TensorRT": "where TensorRT and a GPU are (NGC image)"}


def families_table() -> str:
    """Markdown: one row per family, one column per stage, generated from FAMILIES."""
    lines = ["| family (model_type) | inputs | " + " | ".join(STAGE_COLUMNS) + " |",
             "|" + "---|" * (len(STAGE_COLUMNS) + 2)]
    for mt, fam in FAMILIES.items():
        if mt != fam.model_type:
            continue  # aliases share their family's row
        names = "input_ids, attention_mask" + (
            ", token_type_ids (when type_vocab_size > 0)" if fam.token_types else "")
        label = mt + (f" (also {', '.join(fam.aliases)}: same modules, not in the test matrix)"
                      if fam.aliases else "")
        support = stage_support(mt)
        lines.append(f"| {label} | {names} | " + " | ".join(support[c] for c in STAGE_COLUMNS) + " |")
    other = {"baseline + ONNX": "yes", "fused FP32 (ORT)": "skipped: fusion not known to apply",
             "dynamic INT8": "yes", "dynamic INT8 fused": "skipped with the fused graph",
             "static PTQ": "yes (ptq; ptq-fused skipped with the fused graph)",
             "student": "yes (FP32 ONNX; fused and static INT8 skipped with the fused graph)",
             "QAT": "yes (every layer Linear found in its modules; attention matmuls stay FP32)",
             "QLoRA": "yes (NF4 base, LoRA on every layer Linear)",
             "Optimum rows": "where Optimum's exporter knows it",
             "TensorRT": "where TensorRT and a GPU are (NGC image)"}
    lines.append("| any other encoder (facts read off its modules, `discover_family`; tested: mpnet) "
                 "| input_ids, attention_mask (+ token_type_ids when its forward takes them) | "
                 + " | ".join(other[c] for c in STAGE_COLUMNS) + " |")
    return "\n".join(lines)
