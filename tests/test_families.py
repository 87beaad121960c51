"""Any encoder classifier, not only the packaged MiniLM: for each family users fine-tune (BERT,
DistilBERT, RoBERTa, ELECTRA, DeBERTa-v2) a tiny random model saved with save_pretrained goes
through the whole `make engines` pipeline, the ORT evaluator and one request to a real Triton
server. The stages skipped are exactly those common.arch documents for the family."""

import json

import numpy as np
import pytest
import torch

from common.arch import FAMILIES, all_body_linears, family_of, input_names, skipped_steps
from common.feeds import encode
from common.manifest import Manifest
from common.modelsource import load_tokenizer
from common.onnx_graph import op_counts
from common.task import load_split
from tests.tiny_models import FAMILIES as TESTED
from tests.tiny_models import OUTSIDE

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def built(request, data_dir, tiny_model_dir, tiny_artifacts, tmp_path_factory):
    """family -> (model dir, artifacts dir, the pipeline's stdout); BERT reuses tiny_artifacts."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            if family == "bert":
                cache[family] = (tiny_model_dir, tiny_artifacts, None)
            else:
                import contextlib
                import io

                from engines.pipeline import build_all
                from tests.conftest import tiny_build_config
                from tests.tiny_models import build_tiny

                model = build_tiny(family, data_dir, tmp_path_factory.mktemp(f"tiny-{family}"))
                art = tmp_path_factory.mktemp(f"art-{family}")
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    # Unweighted: 20 steps leave a tiny random model near chance; the plain loss
                    # at least teaches it the class prior, so its top-1 has a margin, while with
                    # the balancing weights its six logits stay within ~1e-3 of each other and
                    # the INT8 agreement gates (meant for trained models) flip on noise (seen
                    # with tiny RoBERTa). The tiny BERT artifacts use the default recipe.
                    build_all(tiny_build_config(model, data_dir, art, class_weights="none"))
                cache[family] = (model, art, out.getvalue())
        return cache[family]

    return get


def with_dependents(roots: dict[str, str], art) -> dict[str, str]:
    """The family's own skips, and the steps made from them (the pipeline's own deps)."""
    from engines.pipeline import BuildConfig, Builder, derived_skip, steps_for

    out = dict(roots)
    for step in steps_for(Builder(BuildConfig(artifacts=str(art)))):
        for d in step.deps:
            if d in out and step.name not in out:
                out[step.name] = derived_skip(d, out[d])
    return out


def test_a_later_stage_keeps_the_reason_of_an_earlier_skip(built, data_dir):
    """`make report` runs `--stages hf` alone: a step made from an artifact an earlier run skipped
    keeps the derived reason, not "not built (add its stage)"."""
    import contextlib
    import io

    from engines.pipeline import build_all
    from tests.conftest import tiny_build_config

    family = next(f for f in TESTED if skipped_steps(f))
    model_dir, art, _ = built(family)
    before = {k: v["skipped"] for k, v in Manifest(art).entries.items() if "skipped" in v}
    assert any(k.startswith("hf-") for k in before)
    with contextlib.redirect_stdout(io.StringIO()):
        build_all(tiny_build_config(model_dir, data_dir, art, class_weights="none", stages=("hf",)))
    after = {k: v["skipped"] for k, v in Manifest(art).entries.items() if "skipped" in v}
    assert after == before


def test_matrix_covers_every_family_in_the_table():
    assert set(TESTED) == {f.model_type for f in FAMILIES.values()}


@pytest.mark.parametrize("family", TESTED + OUTSIDE)
def test_family_through_every_stage(built, family, data_dir, tmp_path):
    """Every family of the table, and one outside it (MPNet: its facts discovered from its
    modules), through every stage that needs no fact discovery cannot give; the rest skipped
    with a one-line reason."""
    from common.trt import tensorrt_status
    from deploy.factories import make_runner

    model_dir, art, log = built(family)
    man = Manifest(art)
    expected_skips = with_dependents(skipped_steps(family), art)
    family_skips = {k: v for k, v in man.entries.items()
                    if "skipped" in v and not k.startswith("trt-")}
    assert {k: v["skipped"] for k, v in family_skips.items()} == expected_skips
    if log is not None:  # `make engines` named every skipped step in one line
        for step, why in expected_skips.items():
            assert f"[skip] {step}: {why}" in log.splitlines()
        assert "Traceback" not in log
    if not tensorrt_status()[0]:
        assert all(man.skipped(f"trt-{v}") for v in ("fp32", "fp16", "int8", "ptq", "qat"))
    built_steps = {k for k, v in man.entries.items() if "skipped" not in v}
    assert {"baseline", "onnx-fp32", "torch-ptq-dynamic", "onnx-dynamic", "calibration",
            "onnx-ptq", "onnx-ptq-s8", "qat", "onnx-qat", "onnx-qat-s8", "qlora"} <= built_steps

    from transformers import AutoModelForSequenceClassification

    ckpt = art / "baseline"
    model = AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    names = input_names(model.config)
    recipe = json.loads((ckpt / "recipe.json").read_text())
    assert recipe["model_type"] == family and recipe["input_names"] == list(names)
    assert ("token_type_ids" in names) == (family in {"bert", "electra"})

    # ONNX export agrees with PyTorch (batch 1 and a padded batch, real sentences)
    enc = encode(load_tokenizer(ckpt), load_split(data_dir, "test").texts[:32], 64)
    with make_runner("ort", "fp32", art, threads=1) as o:
        assert o.input_names == names
        for b in ([0], list(range(32))):
            feed = enc.batch(b, names)
            with torch.inference_mode():
                ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
            got = o.infer(feed)
            assert (got.argmax(-1) == ref.argmax(-1)).all() and np.abs(got - ref).max() < 1e-4

    # the INT8 graphs really hold INT8 arithmetic or Q/DQ
    n_linear = len(all_body_linears(model))
    dyn = op_counts(art / "onnx" / "dynamic.onnx")
    assert dyn.get("MatMulInteger", 0) >= n_linear and "DynamicQuantizeLinear" in dyn
    for v in ("ptq", "ptq-s8", "qat", "qat-s8"):
        ops = op_counts(art / "onnx" / f"{v}.onnx")
        assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) >= n_linear, (v, ops)
    qdq = man.get("onnx-qat")["qdq"]
    fam = family_of(model.config)
    assert fam.discovered is (family in OUTSIDE)
    assert qdq["matmul_weight_quantized"] == n_linear
    assert qdq["matmul_quantized"] == n_linear + (2 * model.config.num_hidden_layers
                                                  if fam.attention_matmuls else 0)
    if not fam.ort_fusion:
        assert not man.built("onnx-fp32-fused") and not man.built("onnx-dynamic-fused")
    else:
        assert op_counts(art / "onnx" / "fp32-fused.onnx").get("Attention") == \
            model.config.num_hidden_layers

    # the student: every other layer of this family's baseline, through the same later steps
    from common.arch import layer_stack

    student = AutoModelForSequenceClassification.from_pretrained(art / "student").eval()
    assert len(layer_stack(student)) == 1 and man.get("student")["layers_kept"] == [1]
    assert man.get("onnx-student")["validation"]["top1_agreement"] == 1.0
    assert man.built("onnx-student-ptq-fused") is bool(fam.ort_fusion)
    with make_runner("ort", "student-fp32", art, threads=1) as o:
        feed = enc.batch(list(range(8)), names)
        with torch.inference_mode():
            ref = student(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        assert np.abs(o.infer(feed) - ref).max() < 1e-4

    # torch dynamic and QLoRA quantize the same Linears, found through the family's table
    with make_runner("torch", "ptq-dynamic", art, threads=1) as q:
        from torch.ao.nn.quantized.dynamic import Linear as DynLinear

        assert sum(isinstance(m, DynLinear) for m in q.model.modules()) == n_linear
    qlora = json.loads((art / "qlora" / "recipe.json").read_text())
    assert len(qlora["targets"]) == n_linear and set(fam.head) <= set(qlora["head"])
    with make_runner("qlora", "nf4", art, threads=1) as q:
        import bitsandbytes as bnb

        assert sum(isinstance(m, bnb.nn.Linear4bit) for m in q.model.modules()) >= n_linear
        assert np.isfinite(q.infer(enc.batch(list(range(8)), names))).all()

    # the evaluator scores it (batch 1 and batched) ...
    from evaluate.__main__ import main as evaluate_main

    rc = evaluate_main(["--backend", "ort", "--variant", "ptq", "--data", str(data_dir),
                        "--artifacts", str(art), "--out", str(tmp_path / "r"), "--threads", "1",
                        "--latency-samples", "5", "--limit", "24"])
    assert rc == 0
    rep = json.loads((tmp_path / "r" / "ort-ptq.json").read_text())
    assert rep["n_examples"] == 24 and rep["batch_invariance"]["differ"] >= 0
    md = (tmp_path / "r" / "ort-ptq.md").read_text()
    # the PTQ report carries every recipe the search tried, and which one it chose
    assert "### Static-PTQ search" in md and md.count("| yes |") == 1
    assert len(rep["made_by"]["search"]["tried"]) >= 4

    # ... and a real Triton server answers one request with the evaluator's prediction
    import tritonclient.http as http

    from deploy.bench import infer_texts
    from deploy.triton_repo import ServeConfig, write_local_repo
    from deploy.triton_server import TritonServer, free_ports

    repo = tmp_path / "repo"
    write_local_repo(repo, ServeConfig(backend="ort", variant="ptq", threads=1), art)
    text = load_split(data_dir, "test").texts[0]
    with TritonServer(repo, free_ports(), tmp_path / "server.log") as s:
        c = http.InferenceServerClient(s.url)
        try:
            answer = infer_texts(http, c, "classifier", [text])
        finally:
            c.close()
    logits = np.load(tmp_path / "r" / rep["logits_file"])
    assert int(answer["label_id"].ravel()[0]) == int(logits[0].argmax())


def test_readme_tables_are_the_generated_ones():
    """The families x stages table (docs/contributing.md) and the README's variants table are
    exactly what `make readme-results` generates from common/arch.py and common/variants.py."""
    from common.arch import families_table
    from common.variants import variants_table
    from tests.conftest import REPO

    for doc, name, table in (("docs/contributing.md", "families", families_table()),
                             ("README.md", "variants", variants_table())):
        text = (REPO / doc).read_text()
        block = text.split(f"<!-- {name}:start", 1)[1].split("\n", 1)[1].split(f"<!-- {name}:end")[0]
        assert block.strip() == table.strip(), f"run `make readme-results` ({name})"
    fused = [ln for ln in families_table().splitlines() if ln.startswith("| deberta-v2")][0]
    assert "skipped: ONNX Runtime's transformers optimizer has no fusion" in fused
