"""Recipes are the configs that run: changing any step's config (or the code that builds it)
rebuilds exactly that step and what reads its artifact; run-only fields (threads, device) rebuild nothing; a saved
config that no longer fits the code is refused in one line."""

import dataclasses
import shutil
from pathlib import Path

import pytest

from common.config import ConfigError, from_recipe, recipe
from engines.pipeline import Builder, plan_all, steps_for
from tests.conftest import tiny_build_config

# BuildConfig field -> (a field of that config to change, its new value, the steps built from it)
CHANGES = {
    "finetune": ("epochs", 3, {"baseline"}),
    # the baseline's and the student's graphs are made by the same step functions and configs
    "export": ("atol", 5e-4, {"onnx-fp32", "onnx-student"}),
    "fuse": ("atol", 3e-3, {"onnx-fp32-fused", "onnx-student-fused"}),
    # ort/ptq-fused is checked against the dynamic INT8 graphs' top-1 floor (PtqFusedConfig)
    "dynamic": ("min_top1", 0.9, {"onnx-dynamic", "onnx-dynamic-fused", "onnx-ptq-fused",
                                  "onnx-student-ptq-fused"}),
    "calib": ("size", 100, {"calibration"}),
    "static": ("tolerable_loss", 0.3, {"onnx-ptq", "onnx-ptq-s8", "onnx-ptq-fused",
                                       "onnx-student-ptq-fused", "onnx-student-ptq-s8"}),
    "teacher": ("batch_size", 64, {"teacher-logits"}),
    "student": ("temperature", 3.0, {"student"}),
    "qat": ("lr", 2e-4, {"qat"}),
    "qat_export": ("min_top1", 0.98, {"onnx-qat", "onnx-qat-s8"}),
    "qlora": ("rank", 8, {"qlora"}),
}


def dependents(cfg, names: set[str]) -> set[str]:
    """names + every step that reads one of them, transitively (from the steps' own deps)."""
    steps = steps_for(Builder(cfg))
    out = set(names)
    changed = True
    while changed:
        changed = False
        for s in steps:
            if s.name not in out and set(s.deps) & out:
                out.add(s.name)
                changed = True
    return out


def rebuilt(plan: dict[str, str]) -> set[str]:
    return {k for k, v in plan.items() if v.startswith("build")}


def skipped(plan: dict[str, str]) -> set[str]:
    return {k for k, v in plan.items() if v.startswith("skip")}


def test_unchanged_configs_plan_nothing(tiny_artifacts, tiny_model_dir, data_dir):
    from common.trt import tensorrt_status

    plan = plan_all(tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts))
    assert rebuilt(plan) == set()
    from common.variants import variants

    trt = {k for k in plan if k.startswith("trt-")}
    assert trt == {v.artifact for v in variants() if v.backend == "trt"}
    assert (trt <= skipped(plan)) == (not tensorrt_status()[0])


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_changed_config_rebuilds_that_step_and_its_dependents(tiny_artifacts, tiny_model_dir,
                                                              data_dir, name):
    base = tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts)
    field, value, direct = CHANGES[name]
    cfg = dataclasses.replace(base, **{name: dataclasses.replace(getattr(base, name),
                                                                 **{field: value})})
    plan = plan_all(cfg)
    assert rebuilt(plan) == dependents(cfg, direct) - skipped(plan)


# a module of step code -> the steps whose own code it is (what reads their artifacts follows)
EDITS = {
    "train.qlora": {"qlora"},
    "export.torch_dynamic": {"torch-ptq-dynamic"},
    "train.student": {"teacher-logits"},  # the student reads the teacher's logits: it follows
    "calibration.ptq_search": {"onnx-ptq"},  # the others reuse its recipe: they follow it
}


@pytest.mark.parametrize("module", sorted(EDITS))
def test_changed_code_rebuilds_that_step(tiny_artifacts, tiny_model_dir, data_dir, module,
                                         monkeypatch, tmp_path):
    """Behaviour changed in code marks the artifact stale like a changed field does (configs
    carry no version number: the step's key fingerprints its code)."""
    import common.codehash as ch
    from tests.test_codehash import edit_module

    cfg = tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts)
    edit_module(monkeypatch, tmp_path, module)
    try:
        plan = plan_all(cfg)
    finally:
        ch._closure.cache_clear()
    assert rebuilt(plan) == dependents(cfg, EDITS[module]) - skipped(plan)
    assert {plan[s] for s in EDITS[module] if s not in skipped(plan)} == {
        "build: the code that builds it changed"}


def test_run_only_fields_rebuild_nothing(tiny_artifacts, tiny_model_dir, data_dir):
    base = tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts)
    cfg = dataclasses.replace(base, finetune=dataclasses.replace(base.finetune, threads=1,
                                                                 device="cpu"),
                              qat=dataclasses.replace(base.qat, threads=1))
    assert rebuilt(plan_all(cfg)) == set()


def test_real_rebuild_matches_the_plan(tiny_artifacts, tiny_model_dir, data_dir, tmp_path):
    from engines.pipeline import build_all

    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    base = tiny_build_config(tiny_model_dir, data_dir, art, stages=("baseline", "onnx", "dynamic"))
    cfg = dataclasses.replace(base, dynamic=dataclasses.replace(base.dynamic, min_top1=0.9))
    planned = rebuilt(plan_all(cfg))
    b = build_all(cfg)
    assert set(b.built) == planned == {"onnx-dynamic", "onnx-dynamic-fused"}
    assert "baseline" in b.up_to_date and "onnx-fp32" in b.up_to_date
    assert rebuilt(plan_all(cfg)) == set()  # and now it is current


def test_saved_config_round_trips_and_mismatch_is_one_line():
    from engines.trt_build import TrtConfig
    from train.qat import QatConfig

    for cfg in (QatConfig(lr=3e-5), TrtConfig(precision="fp32")):
        assert from_recipe(type(cfg), recipe(cfg)) == cfg
    r = recipe(QatConfig())
    assert r["type"] == "QatConfig" and "device" not in r["fields"]  # run-only: not in the recipe
    assert set(r) == {"type", "fields"}  # no version: the key fingerprints the code instead
    with pytest.raises(ConfigError, match=r"^a saved config has field\(s\) \['gone'\] that this "
                                          r"code does not know \(QatConfig\).*make engines"):
        from_recipe(QatConfig, {**r, "fields": {**r["fields"], "gone": 1}})
    # a field this code has that the recipe lacks: other code wrote it, no default filled in
    fields = {k: v for k, v in r["fields"].items() if k != "distill"}
    with pytest.raises(ConfigError, match=r"has no field\(s\) \['distill'\] \(QatConfig\)"):
        from_recipe(QatConfig, {**r, "fields": fields})
    with pytest.raises(ConfigError, match="is a TrtConfig, not a QatConfig"):
        from_recipe(QatConfig, recipe(TrtConfig()))
    with pytest.raises(ConfigError, match="does not fit QatConfig"):
        from_recipe(QatConfig, {**r, "fields": {**r["fields"], "epochs": -1}})


def test_every_config_is_reachable_from_python_m_engines():
    """Each field of each step's config has its flag, and the flag sets that field."""
    from engines.__main__ import NOT_FLAGS, PREFIXES, parse

    cfg, _ = parse(["--trt-profile-max-seq", "256", "--ptq-methods", "minmax",
                    "--calib-size", "512", "--no-qat-attention-matmuls", "--qlora-targets",
                    "attention", "--epochs", "3", "--data", "x/y", "--text-pair-column", "b",
                    "--labels", "n,y", "--artifacts", "out/art"])
    assert cfg.trt.profile.max_seq == 256 and cfg.static.methods == ("minmax",)
    assert cfg.calib.size == 512 and cfg.qat.attention_matmuls is False
    assert cfg.qlora.targets == "attention" and cfg.finetune.epochs == 3
    assert cfg.task.data == "x/y" and cfg.task.text_pair_column == "b" and cfg.task.labels == "n,y"
    # every step reads the task artifact, not the user's data
    assert cfg.finetune.data == cfg.qat.data == cfg.export.data == str(Path("out/art/task"))
    import argparse

    from engines.__main__ import parser

    flags = {a.dest for a in parser()._actions if isinstance(a, argparse.Action)}
    for name, (prefix, skip) in PREFIXES.items():
        for f in dataclasses.fields(getattr(cfg, name)):
            if f.name in NOT_FLAGS + skip:
                continue
            if dataclasses.is_dataclass(f.default_factory) if f.default_factory is not \
                    dataclasses.MISSING else False:
                continue
            sub = getattr(getattr(cfg, name), f.name)
            if dataclasses.is_dataclass(sub):
                for g in dataclasses.fields(sub):
                    assert f"{prefix}{f.name}_{g.name}".replace("-", "_") in flags
            else:
                assert f"{prefix}{f.name}".replace("-", "_") in flags, (name, f.name)
    with pytest.raises(ConfigError):
        parse(["--trt-profile-min-seq", "0"])


def test_saved_models_written_by_other_code_are_refused_in_one_line(tiny_artifacts, tmp_path):
    import json

    from common.manifest import ArtifactError
    from common.qat_model import load_qat_model

    qat = tmp_path / "qat"
    shutil.copytree(tiny_artifacts / "qat", qat)
    r = json.loads((qat / "recipe.json").read_text())
    r["quantizers"]["granularity"] = "per-block"  # a field this code does not know
    (qat / "recipe.json").write_text(json.dumps(r))
    with pytest.raises(ArtifactError, match="another version of the QAT code.*make engines"):
        load_qat_model(qat)
    (qat / "recipe.json").write_text("{broken")
    with pytest.raises(ArtifactError, match="corrupt.*make engines"):
        load_qat_model(qat)


def test_the_recipe_holds_every_field_but_where_data_is_read():
    """A field added later is in the recipe from the start, so if its default ever changes, an
    old artifact's key no longer matches (it used to be left out while equal to the default);
    the data and model locations are not in it (their content is keyed instead)."""
    from dataclasses import dataclass

    from common.config import doc, location, recipe
    from train.finetune import FinetuneConfig

    @dataclass(frozen=True)
    class Cfg:
        lr: float = 1e-4
        average_last: int = doc(0, "a later option")
        data: str = location("x", "where")

    assert recipe(Cfg())["fields"] == {"lr": 1e-4, "average_last": 0}
    assert recipe(Cfg(data="y")) == recipe(Cfg())
    fields = recipe(FinetuneConfig())["fields"]
    assert {"layer_decay", "focal_gamma", "average_last"} <= fields.keys()
    assert not {"model", "data", "device", "threads"} & fields.keys()


def test_keys_do_not_depend_on_how_the_data_path_is_spelled(tiny_artifacts, tiny_model_dir,
                                                            data_dir, monkeypatch):
    """The same data folder given relative, absolute or with a trailing slash plans nothing new
    (the data is keyed by content); every step says why when it would be rebuilt."""
    import os

    from engines.pipeline import plan_all
    from tests.conftest import tiny_build_config

    rel = os.path.relpath(data_dir, tiny_artifacts.parent)
    monkeypatch.chdir(tiny_artifacts.parent)
    for spelled in (str(data_dir), str(data_dir) + "/", rel, rel + "/"):
        plan = plan_all(tiny_build_config(tiny_model_dir, spelled, tiny_artifacts))
        assert {k: v for k, v in plan.items() if v.startswith("build")} == {}, spelled
    plan = plan_all(tiny_build_config(tiny_model_dir, data_dir, tiny_artifacts,
                                      finetune=__import__("dataclasses").replace(
                                          tiny_build_config(tiny_model_dir, data_dir,
                                                            tiny_artifacts).finetune, lr=1e-3)))
    assert plan["baseline"] == "build: recipe field(s) changed: lr"
    assert plan["onnx-fp32"] == "build: its input baseline is rebuilt in this run"


def test_same_inputs_make_the_same_bytes(tiny_model_dir, data_dir, tmp_path):
    """Two builds of the baseline from the same inputs make byte-identical folders (recipe.json
    keeps no wall-clock fields: the build's manifest entry records those), so what is built from
    them keeps its key."""
    from common.manifest import Manifest
    from engines.pipeline import build_all

    for name in ("a", "b"):
        build_all(tiny_build_config(tiny_model_dir, data_dir, tmp_path / name,
                                    stages=("task", "baseline")))
    a, b = Manifest(tmp_path / "a"), Manifest(tmp_path / "b")
    assert a.get("baseline")["sha256"] == b.get("baseline")["sha256"]
    assert a.get("baseline")["key"] == b.get("baseline")["key"]
    assert "train_minutes" in a.get("baseline")  # recorded, beside the folder, not in it
    import json

    saved = json.loads((tmp_path / "a" / "baseline" / "recipe.json").read_text())
    assert "train_minutes" not in saved and all("minutes" not in h for h in saved["history"])


def test_qlora_adapter_config_lists_its_targets_sorted(tmp_path):
    """peft writes target_modules from a set (its order follows the process's string-hash salt);
    sorted, the same adapters save the same bytes, and peft reads them back."""
    import json

    from peft import LoraConfig

    from train.qlora import _sort_target_modules

    LoraConfig(r=4, target_modules=["value", "query", "key"]).save_pretrained(tmp_path)
    f = tmp_path / "adapter_config.json"
    cfg = json.loads(f.read_text())
    cfg["target_modules"] = ["value", "query", "key"]  # as a salted set may list them
    f.write_text(json.dumps(cfg))
    _sort_target_modules(f)
    assert json.loads(f.read_text())["target_modules"] == ["key", "query", "value"]
    assert LoraConfig.from_pretrained(tmp_path).target_modules == {"key", "query", "value"}
