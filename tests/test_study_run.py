"""Issue 7: perplexity computed by hand, the study end to end on tiny models (classifier from
the tiny artifacts, a tiny random GPT-2 with a word-level tokenizer built offline)."""

import json
import math

import pytest
import torch

from study.lm import load_ptb, perplexity


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory, shared_data):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-gpt2")
    words = (shared_data.parent / "ptb" / "valid.txt").read_text().split()
    vocab = {w: i for i, w in enumerate(["<unk>"] + sorted(set(words))[:500])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=64, n_layer=2, n_head=2)
    GPT2LMHeadModel(cfg).eval().save_pretrained(out)
    return out


def test_perplexity_equals_exp_of_mean_token_loss(tiny_gpt2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    text = "the company said it expects to report a loss for the third quarter"
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
    by_hand = math.exp(-logp.gather(1, ids[0, 1:, None]).mean().item())
    r = perplexity(model, tok, text, max_length=64, stride=64)
    assert r["tokens_scored"] == ids.shape[1] - 1
    assert r["perplexity"] == pytest.approx(by_hand, rel=1e-5)
    # sliding windows: every token after the first is scored exactly once
    long = " ".join([text] * 12)
    n = tok(long, return_tensors="pt").input_ids.shape[1]
    w = perplexity(model, tok, long, max_length=32, stride=16)
    assert w["tokens_scored"] == n - 1 and math.isfinite(w["perplexity"])


def test_load_ptb_local(shared_data):
    text = load_ptb(str(shared_data.parent / "ptb"), "test")
    assert len(text.splitlines()) == 3761 and "<unk>" in text


def test_peak_transient_bytes_counts_live_tensors():
    import torch

    from study.memory import peak_transient_bytes

    def one_at_a_time():
        a = torch.ones(1_000_000)  # 4 MB of float32
        del a
        b = torch.ones(1_000_000)
        del b

    def two_alive():
        a, b = torch.ones(1_000_000), torch.ones(1_000_000)
        del a, b

    assert peak_transient_bytes(one_at_a_time) == 4_000_000
    assert peak_transient_bytes(two_alive) == 8_000_000


def test_study_classifier_end_to_end(tiny_artifacts, data_dir, tmp_path):
    from study.__main__ import main

    rc = main(["--task", "classifier", "--artifacts", str(tiny_artifacts), "--data", str(data_dir),
               "--out", str(tmp_path), "--ours", "absmax-8-channel,nf4-4-group", "--bnb", "nf4,int8",
               "--limit", "48", "--latency-samples", "3", "--threads", "1"])
    assert rc == 0
    r = json.loads((tmp_path / "study-classifier.json").read_text())
    rows = {(x["method"], x["policy"]): x for x in r["rows"]}
    fp32 = rows[("fp32", "whole")]
    assert len(r["rows"]) == 1 + 2 * 4 and set(r["sensitivity"]) == {"layer.0", "layer.1"}
    for (method, policy), x in rows.items():
        if method == "fp32":
            continue
        assert x["weight_bytes"] < fp32["weight_bytes"] and 0 <= x["macro_f1"] <= 1
        if policy == "whole" and method.startswith(("absmax", "nf4")):
            assert x["quantized_layers"] == x["linear_layers"] == 14  # 12 encoder + pooler + head
        assert x["peak_transient_bytes"] > 0
        assert x["peak_inference_bytes"] == x["weight_bytes"] + x["peak_transient_bytes"]
    sel = rows[("nf4-g64", "selective")]
    # head (classifier + pooler) and the most sensitive block (6 Linears) stay full precision
    assert sel["quantized_layers"] == 14 - 2 - 6
    assert rows[("nf4-g64", "whole")]["weight_bytes"] < rows[("absmax-int8-channel", "whole")]["weight_bytes"]
    nf = r["nf4_reconstruction"]
    assert nf["layers"] == 14 and nf["ours_mean"] == pytest.approx(nf["bnb_mean"], rel=1e-4)
    md = (tmp_path / "study-classifier.md").read_text()
    assert "| nf4-g64 | ours | selective |" in md and "peak inference MB" in md
    assert (tmp_path / "study-classifier-quality-memory.png").stat().st_size > 0
    from evaluate.compare import write_comparison

    # the study is linked (it measured the current baseline), not read as a variant
    comparison = write_comparison(tmp_path, [], artifacts=tiny_artifacts)
    assert "[study-classifier.md](study-classifier.md)" in comparison["md"].read_text()
    assert r["made_by"]["artifact"] == "baseline"


def test_study_lm_end_to_end(tiny_gpt2, shared_data, tmp_path):
    from study.__main__ import main

    rc = main(["--task", "lm", "--model", str(tiny_gpt2), "--data", str(shared_data.parent / "ptb"),
               "--out", str(tmp_path), "--ours", "absmax-8-channel", "--bnb", "int8",
               "--limit", "200", "--max-length", "64", "--stride", "32", "--latency-samples", "2"])
    assert rc == 0
    r = json.loads((tmp_path / "study-lm.json").read_text())
    assert r["metric"] == "perplexity" and set(r["sensitivity"]) == {"h.0", "h.1"}
    rows = {(x["method"], x["policy"]): x for x in r["rows"]}
    # GPT-2's Conv1D layers count as Linears: 4 per block + lm_head
    assert rows[("absmax-int8-channel", "whole")]["quantized_layers"] == 9
    assert all(math.isfinite(x["perplexity"]) for x in r["rows"])
    assert all(x["peak_inference_bytes"] > x["weight_bytes"] for x in r["rows"])
