"""The CPU tier: bf16 by default where the CPU multiplies bf16 natively (evaluation stays fp32), N-FGSM,
catastrophic-overfitting detection, and the tier build (interrupted, then continued) at tiny size."""

import json
from pathlib import Path

import pytest
import torch

import againzoo
from againzoo import cpu, recipes
from againzoo.errors import ConfigError
from againzoo.io import read_jsonl
from againzoo.runtime import accuracy
from againzoo.training import trainer as trainer_mod
from againzoo.training.methods import METHODS, StepContext
from againzoo.training.overfitting import FLAG, collapsed, run_collapse
from againzoo.training.trainer import device_setup, make_optimizer, train_step

from .conftest import TINY_RUN, tiny


def _recipe(**kw):
    return recipes.parse({"name": "t", "model": {"kwargs": {"width": 4}}, **kw})


@pytest.fixture
def bf16_cpu(monkeypatch):
    cpu.native_bf16.cache_clear()
    yield lambda on: monkeypatch.setenv("AGAINZOO_CPU_BF16", "1" if on else "0")
    cpu.native_bf16.cache_clear()


def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(bf16_cpu):
    dev = torch.device("cpu")
    bf16_cpu(True)
    cpu.native_bf16.cache_clear()
    s = device_setup(_recipe(), dev)
    assert (s.precision, s.channels_last) == ("bf16", True)
    assert device_setup(_recipe(precision="fp32"), dev).precision == "fp32"  # a recipe's choice wins
    assert device_setup(_recipe(channels_last=False), dev).channels_last is False
    bf16_cpu(False)
    cpu.native_bf16.cache_clear()
    s = device_setup(_recipe(), dev)
    assert (s.precision, s.channels_last) == ("fp32", False)


def test_native_bf16_override_is_checked(bf16_cpu, monkeypatch):
    monkeypatch.setenv("AGAINZOO_CPU_BF16", "yes")
    cpu.native_bf16.cache_clear()
    with pytest.raises(ConfigError, match="AGAINZOO_CPU_BF16 must be 0 or 1"):
        cpu.native_bf16()


def test_a_bf16_training_step_on_cpu_is_finite_and_monitoring_stays_fp32(bf16_cpu):
    bf16_cpu(True)
    cpu.native_bf16.cache_clear()
    r = _recipe(method={"name": "n_fgsm"}, attack={"eps": "8/255"})
    setup = device_setup(r, torch.device("cpu"))
    model = tiny(width=4).to(memory_format=torch.channels_last)
    opt = make_optimizer(r, model, torch.device("cpu"))
    x, y = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (8,))
    dtypes = []
    hook = model.backbone.stem.conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    ctx = StepContext(model, r.attack, True, 1.0, 0.0, setup.autocast)
    loss, logits, _ = train_step(ctx, METHODS["n_fgsm"], opt, x, y)
    assert torch.bfloat16 in dtypes and torch.isfinite(loss) and torch.isfinite(logits.float()).all()
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    dtypes.clear()
    accuracy(model, x, y, eps=8 / 255, steps=2)  # monitoring / evaluation: fp32 throughout
    hook.remove()
    assert dtypes and set(dtypes) == {torch.float32}


def test_n_fgsm_is_one_unprojected_step_from_wide_noise():
    r = _recipe(method={"name": "n_fgsm"}, attack={"eps": "8/255"})
    model = tiny(width=4)
    ctx = StepContext(model, r.attack, False, 0.0, 0.0, lambda: torch.autocast("cpu", enabled=False))
    x = torch.rand(64, 3, 32, 32) * 0.5 + 0.25  # away from the image range's edges
    x_adv = METHODS["n_fgsm"].craft(ctx, x, torch.randint(0, 10, (64,)))
    d = (x_adv - x).abs()
    eps = 8 / 255
    assert d.max() > 1.5 * eps  # noise of 2 eps plus a step of eps, never projected back to eps
    assert d.max() <= 3 * eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    # noise 0: the step alone is FGSM's, exactly eps per pixel
    r0 = _recipe(method={"name": "n_fgsm"}, attack={"eps": "8/255", "noise": 0})
    ctx0 = StepContext(model, r0.attack, False, 0.0, 0.0, lambda: torch.autocast("cpu", enabled=False))
    d0 = (METHODS["n_fgsm"].craft(ctx0, x, torch.randint(0, 10, (64,))) - x).abs()
    assert torch.allclose(d0[d0 > 0], torch.full_like(d0[d0 > 0], eps), atol=1e-6)
    with pytest.raises(ConfigError, match="n_fgsm is an L-inf method"):
        _recipe(method={"name": "n_fgsm"}, attack={"eps": 0.5, "norm": "L2"})


def test_collapse_rule():
    assert collapsed(0.05, 0.30, 0.5, 0.1)  # below half of the best, by 25 points
    assert not collapsed(0.26, 0.30, 0.5, 0.1)  # a wobble
    assert not collapsed(0.02, 0.08, 0.5, 0.1)  # early noise: halved, but by 6 points only
    assert not collapsed(None, 0.3, 0.5, 0.1) and not collapsed(0.0, -1.0, 0.5, 0.1)


def test_training_flags_catastrophic_overfitting_stops_and_stays_stopped(tmp_path, monkeypatch):
    """Held-out PGD accuracy 0.30, then 0.02: the second epoch is flagged, the run ends there, a resume
    trains nothing more, and the run is named as collapsed (the zoo build refuses to publish it)."""
    from againzoo.training import train

    script = iter([0.30, 0.02, 0.25, 0.25])

    def fake_monitor(published, raw, monitor, eps, steps, epoch, env, dev):
        return {"val_clean_acc": 0.5, "val_robust_acc": next(script)}

    monkeypatch.setattr(trainer_mod, "_monitor", fake_monitor)
    overrides = [f"output_dir={tmp_path}", *TINY_RUN, "epochs=4", "method.name=n_fgsm", "attack.step_size=null",
                 "data.limit=400", "model.kwargs.width=4"]  # the monitor is scripted: the training only has to run
    run = train("quickstart", overrides=overrides, progress=False)
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1] and rows[1][FLAG] is True and FLAG not in rows[0]
    assert rows[1]["co_best_val_robust"] == 0.30
    assert "catastrophic overfitting at epoch 2" in run_collapse(run)
    train(resume=run, progress=False)
    assert len(read_jsonl(run / "metrics.jsonl")) == 2
    # eval.stop_on_co: false records the flag and trains on
    script = iter([0.30, 0.02, 0.25, 0.25])
    run2 = train("quickstart", overrides=[*overrides, f"output_dir={tmp_path / 'on'}", "eval.stop_on_co=false"],
                 progress=False)
    assert len(read_jsonl(run2 / "metrics.jsonl")) == 4 and run_collapse(run2) is not None


def test_tier_names_are_registered_and_unknown_tier_is_one_line():
    from againzoo.zoo import ENTRIES, TIERS, build

    ids, minutes = TIERS["cpu"]
    assert minutes == 60 and [ENTRIES[i].recipe for i in ids] == ["cifar10_resnet18w16_cpu",
                                                                  "cifar10_resnet18w16_again_cpu"]
    twin, again = (recipes.load(ENTRIES[i].recipe) for i in ids)
    assert twin.model.kwargs["width"] == again.model.kwargs["width"] == 16 and "w16" in ids[0] and "cpu" in ids[0]
    # the pair differs only in AGAIN
    assert twin.model_copy(update={"name": "x", "description": "", "model": twin.model.model_copy(
        update={"again": again.model.again})}).to_dict() == again.model_copy(update={"name": "x", "description": ""}).to_dict()
    assert again.model.again.gate_source == "pred"
    with pytest.raises(ConfigError, match="unknown tier 'tpu'"):
        build(tier="tpu")


def test_a_zoo_id_without_pretrained_says_how_to_build_its_architecture(tmp_path, monkeypatch):
    from againzoo.registry import PretrainedEntry, register

    monkeypatch.setenv("AGAINZOO_REGISTRY", str(tmp_path / "registry.json"))
    register(PretrainedEntry("again_resnet18_w16_cpu", "cifar10", "a/b", "0" * 64, recipe="cifar10_resnet18w16_again_cpu",
                             arch="again_resnet18", tag="w16_cpu_cifar10"))
    with pytest.raises(ConfigError, match="again_resnet18_w16_cpu names published weights.*again_resnet18 "
                                          "\\(the recipe cifar10_resnet18w16_again_cpu"):
        againzoo.create_model("again_resnet18_w16_cpu")


TINY_EVAL = {"pgd_steps": (2,), "cw_steps": 2, "n_check": 8, "aa_budget": {"n_iter": 3, "n_targets": 2, "n_queries": 5}}


@pytest.mark.slow
def test_tier_build_interrupted_continues_and_loads_by_every_name(tmp_path, monkeypatch):
    """A tier-like pair at tiny size: interrupted in the twin's training, then in the AGAIN model's
    evaluation, each call continues where the last stopped (nothing trained twice, the same epochs for
    both); then the published files load through torch.hub, timm's pretrained tag and create_model."""
    import timm

    from againzoo import zoo
    from againzoo.checkpoint import sha256_of

    root = Path(__file__).resolve().parents[1]
    registry = tmp_path / "registry.json"
    monkeypatch.setenv("AGAINZOO_REGISTRY", str(registry))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    pair = [zoo.ZooEntry("resnet18_cifar_w8_cpu", "quickstart", ("model.again.enabled=false",),
                         arch="resnet18_cifar", tag="w8_cpu_digits"),
            zoo.ZooEntry("again_resnet18_w8_cpu", "quickstart", ("model.again.gate_source=pred", "model.again.alpha=1"),
                         arch="again_resnet18", tag="w8_cpu_digits")]
    kw = dict(entries=pair, zoo_dir=tmp_path / "zoo", registry=registry, card=tmp_path / "CARD.md",
              work_dir=tmp_path / "runs", overrides=[*TINY_RUN, "epochs=2"], train_minutes=5, n_examples=24,
              progress=False, eval_kw=TINY_EVAL)

    class Stop(Exception):
        pass

    real_plot = trainer_mod._plot_curves
    calls = {"plot": 0, "train": 0}

    def plot_then_stop(run_dir, rows):  # after epoch 1's state is saved: the process "dies"
        real_plot(run_dir, rows)
        calls["plot"] += 1
        if calls["plot"] == 1:
            raise Stop

    monkeypatch.setattr(trainer_mod, "_plot_curves", plot_then_stop)
    with pytest.raises(Stop):
        zoo.build(**kw)
    plan = json.loads((tmp_path / "runs" / "plan.json").read_text())
    assert plan["ids"] == [e.id for e in pair] and plan["epochs"] == 2

    real_eval = zoo.evaluate_checkpoint

    def eval_stops_on_again(source, *a, **k):
        if "again_" in str(source):
            raise Stop
        return real_eval(source, *a, **k)

    monkeypatch.setattr(zoo, "evaluate_checkpoint", eval_stops_on_again)
    monkeypatch.setattr(zoo, "_measure", lambda *a: pytest.fail("a resumed build re-measured its epochs"))
    with pytest.raises(Stop):
        zoo.build(**kw)
    twin_rows = read_jsonl(tmp_path / "zoo" / "resnet18_cifar_w8_cpu-digits" / "metrics.jsonl")
    assert [r["epoch"] for r in twin_rows] == [0, 1]  # resumed after epoch 1, not restarted
    monkeypatch.setattr(zoo, "evaluate_checkpoint", real_eval)
    from dataclasses import replace

    from againzoo.registry import entries, register

    twin = next(e for e in entries(registry) if e.model == "resnet18_cifar_w8_cpu")
    register(replace(twin, note="a note written for these weights"), registry)
    import againzoo.training as training_pkg

    real_train = training_pkg.train

    def counting_train(*a, **k):
        calls["train"] += 1
        return real_train(*a, **k)

    monkeypatch.setattr(training_pkg, "train", counting_train)
    m = zoo.build(**kw)
    assert calls["train"] == 0  # both published already: only the AGAIN model's evaluation was left
    notes = {e.model: e.note for e in entries(registry)}  # re-registered, the same weights keep their note
    assert notes == {"resnet18_cifar_w8_cpu": "a note written for these weights", "again_resnet18_w8_cpu": None}
    assert m["resumed"] and [e["eval_s"] > 0 for e in m["entries"]] == [False, True]
    for e, rec in zip(pair, m["entries"]):
        folder = tmp_path / "zoo" / f"{e.id}-digits"
        built = json.loads((folder / zoo.BUILD).read_text())
        assert built["sha256"] == built["evaluated_sha256"] == sha256_of(folder / "model.safetensors")
        assert built["epochs"] == 2 and built["training"]["train_minutes"] >= 0 and built["training"]["images_per_s"] > 0
        assert rec["registry"]["training"]["epochs"] == 2 and rec["registry"]["tag"] == "w8_cpu_digits"
    x = torch.rand(3, 3, 16, 16)
    for e in pair:
        ref = againzoo.from_pretrained(tmp_path / "zoo" / f"{e.id}-digits")
        by_name = againzoo.create_model(e.id, pretrained=True, dataset="digits")
        by_timm = timm.create_model(f"{e.arch}.{e.tag}", pretrained=True)
        assert torch.equal(by_name(x), ref(x)) and torch.equal(by_timm(x), ref(x))
    hubbed = torch.hub.load(str(root), "resnet18_cifar", source="local", pretrained=False, dataset="digits")
    assert type(hubbed).__name__ == "ResNetCifar"
    card = (tmp_path / "CARD.md").read_text()
    assert "resnet18_cifar_w8_cpu" in card and "again_resnet18_w8_cpu" in card


@pytest.mark.slow
def test_a_collapsed_run_is_never_published(tmp_path, monkeypatch):
    from againzoo import zoo

    monkeypatch.setenv("AGAINZOO_REGISTRY", str(tmp_path / "registry.json"))
    script = iter([0.30, 0.01])
    monkeypatch.setattr(trainer_mod, "_monitor", lambda *a: {"val_clean_acc": 0.5, "val_robust_acc": next(script)})
    m = zoo.build(entries=[zoo.ZooEntry("resnet18_cifar_w8_cpu", "quickstart", ("model.again.enabled=false",))],
                  zoo_dir=tmp_path / "zoo", card=tmp_path / "CARD.md", work_dir=tmp_path / "runs",
                  overrides=[*TINY_RUN, "epochs=3"], n_examples=8, progress=False, eval_kw=TINY_EVAL)
    assert "not published: catastrophic overfitting at epoch 2" in m["entries"][0]["refused"]
    assert not (tmp_path / "zoo" / "resnet18_cifar_w8_cpu-digits").exists() and not (tmp_path / "registry.json").exists()


@pytest.mark.slow
def test_a_plain_model_s_evaluation_continues_from_the_zoo_folder_alone(tmp_path, monkeypatch):
    """A build stopped in a plain model's evaluation keeps that evaluation's finished attacks beside the
    published weights as per-example results (kilobytes), so a later session with the zoo folder but
    no work dir (a fresh checkout) continues it instead of starting over; the state goes once recorded."""
    import shutil

    from againzoo import autoattack as AA
    from againzoo import evaluation, zoo
    from againzoo.io import load_tensors

    monkeypatch.setenv("AGAINZOO_REGISTRY", str(tmp_path / "registry.json"))
    kw = dict(entries=[zoo.ZooEntry("resnet18_cifar_w8_cpu", "quickstart", ("model.again.enabled=false",))],
              zoo_dir=tmp_path / "zoo", card=tmp_path / "CARD.md", work_dir=tmp_path / "runs",
              overrides=[*TINY_RUN, "epochs=1"], n_examples=24, progress=False, eval_kw=TINY_EVAL)

    class Stop(Exception):
        pass

    real_aa = AA.run_autoattack
    monkeypatch.setattr(AA, "run_autoattack", lambda *a, **k: (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):  # our attacks finished, then the process "dies" in AutoAttack
        zoo.build(**kw)
    folder = tmp_path / "zoo" / "resnet18_cifar_w8_cpu-digits"
    units = list((folder / zoo.EVAL_STATE).glob("*/*.safetensors"))
    assert units and all(t.dtype == torch.bool for u in units for t in load_tensors(u)[0].values())
    shutil.rmtree(tmp_path / "runs")  # a fresh checkout: only what was committed, the zoo folder
    monkeypatch.setattr(AA, "run_autoattack", real_aa)
    ran = []
    real_batched = evaluation._batched_attack
    monkeypatch.setattr(evaluation, "_batched_attack", lambda m, spec, *a: ran.append(spec.name) or real_batched(m, spec, *a))
    m = zoo.build(**kw)
    ev = json.loads((folder / "eval.json").read_text())
    assert "AA" in ev["columns"] and not any(name in ran for name in ev["attacks"])
    assert m["entries"][0]["train_s"] == 0.0 and not (folder / zoo.EVAL_STATE).exists()
    build = json.loads((folder / zoo.BUILD).read_text())  # the evaluation's minutes over both calls, not this one's
    assert ev["runtime"]["units_reused"] == len(units) and build["eval_minutes_all_calls"] >= build["eval_minutes"]


def test_cpu_name_comes_from_cpuinfo(monkeypatch):
    monkeypatch.setattr(cpu, "_cpuinfo", lambda key: {"model name": "AMD EPYC 7B13"}.get(key, ""))
    assert cpu.cpu_name() == "AMD EPYC 7B13"
    monkeypatch.setattr(cpu, "_cpuinfo", lambda key: "")
    assert cpu.cpu_name()  # the platform's name where /proc/cpuinfo has none


def test_int8_instructions_name_the_best_the_cpu_has(monkeypatch):
    for flags, name in (("fpu avx2 avx512f avx512_vnni amx_int8 amx_tile", "AMX"), ("avx2 avx512_vnni", "AVX512-VNNI"),
                        ("avx2 avx_vnni", "AVX-VNNI"), ("sse4_2 avx2 fma", "AVX2"), ("sse4_2", "")):
        monkeypatch.setattr(cpu, "_cpuinfo", lambda key, f=flags: f if key == "flags" else "")
        assert cpu.int8_instructions() == name
