"""The benchmarks run at a tiny size so they cannot rot (speed itself is not asserted)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, out: Path, *args: str) -> tuple[dict, str]:
    """Run benchmarks/<script> with ``args``; return its JSON and stdout."""
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text()), res.stdout


@pytest.mark.slow
def test_train_throughput_benchmark_runs(tmp_path):
    data, stdout = run_benchmark("train_throughput.py", tmp_path / "train.json", "--batch", "8", "--steps", "1",
                                 "--warmup", "0", "--attack-steps", "2")
    assert [r["variant"] for r in data["results"]] == ["pgd_at", "again_pgd_at", "again_pgd_at_ema"]
    assert all(r["images_per_s"] > 0 and r["peak_memory_mb"] > 0 for r in data["results"])
    assert "AGAIN overhead" in stdout and "EMA overhead" in stdout
    assert data["ema_overhead"] == data["results"][1]["images_per_s"] / data["results"][2]["images_per_s"] - 1
    # the same benchmark data-parallel under torchrun (2 gloo ranks), against the one-process JSON
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           str(ROOT / "benchmarks" / "train_throughput.py"), "--batch", "8", "--steps", "1", "--warmup", "0",
           "--attack-steps", "2", "--json", str(tmp_path / "ddp.json"), "--single", str(tmp_path / "train.json")]
    env = {**os.environ, "AGAINZOO_THREADS": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())["results"]
    assert all(r["world_size"] == 2 and r["total_images_per_s"] > r["images_per_s"] > 0 for r in ddp)
    assert all(r["scaling_efficiency"] == pytest.approx(
        r["total_images_per_s"] / (2 * s["images_per_s"])) for r, s in zip(ddp, data["results"]))
    assert res.stdout.count("total img/s") == 1  # rank 0 prints the table


@pytest.mark.slow
def test_eval_throughput_benchmark_runs(tmp_path):
    data, stdout = run_benchmark("eval_throughput.py", tmp_path / "eval.json", "--n", "4")
    rows = data["results"]
    assert [r["what"] for r in rows] == ["PGD-20 (joint loss)", "PGD-20 (joint loss, channels_last)",
                                         "quick suite", "aa suite", "paper suite"]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert all(r["grad_passes_per_s"] == pytest.approx(20 * r["images_per_s"]) for r in rows[:2])
    assert data["aa_over_quick"] > 0 and "official AutoAttack" in stdout
    assert data["channels_last_speedup"] == pytest.approx(rows[0]["seconds"] / rows[1]["seconds"])
    # PGD-20 alone, against a training benchmark of the same model size: passes/s over the step's
    train, _ = run_benchmark("train_throughput.py", tmp_path / "train.json", "--variants", "pgd_at", "--batch", "8",
                             "--steps", "1", "--warmup", "0", "--attack-steps", "2")
    data, stdout = run_benchmark("eval_throughput.py", tmp_path / "vs.json", "--n", "4", "--suites", "",
                                 "--vs-train", str(tmp_path / "train.json"))
    assert len(data["results"]) == 2 and data["aa_over_quick"] is None
    (cmp,) = data["vs_train"]
    step_passes = train["results"][0]["total_images_per_s"] * 3  # PGD-2 training: 2 passes to craft, 1 to train
    assert cmp["train_grad_passes_per_s"] == pytest.approx(step_passes)
    assert cmp["eval_over_train"] == pytest.approx(max(r["grad_passes_per_s"] for r in data["results"]) / step_passes)
    assert "pgd_at training step" in stdout
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval_throughput.py"), "--n", "4", "--width", "4",
                          "--suites", "", "--vs-train", str(tmp_path / "train.json"), "--json", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "measured width 8 at 16px, not width 4" in res.stderr


@pytest.mark.slow
def test_inference_benchmark_runs(tmp_path):
    data, stdout = run_benchmark("inference.py", tmp_path / "inf.json", "--iters", "2")
    rows = data["results"]
    assert {(r["runtime"], r["precision"], r["batch"]) for r in rows} >= {
        (rt, p, b) for b in (1, 64) for rt, p in (("torch eager (cpu)", "fp32"), ("onnxruntime CPU", "fp32"),
                                                  ("onnxruntime CPU", "fp16"), ("onnxruntime CPU", "int8"))}
    sizes = {r["precision"]: r["file_mb"] for r in rows if r["runtime"] == "onnxruntime CPU"}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    assert all(r["speedup_vs_onnxruntime_fp32"] == 1.0 for r in rows if (r["runtime"], r["precision"]) ==
               ("onnxruntime CPU", "fp32"))
    assert "vs ort fp32" in stdout
    ops = {prec: {o["op"]: o for o in table} for prec, table in data["ops_batch_64"].items()}
    assert "Conv" in ops["fp32"] and "QLinearConv" in ops["int8"] and "QLinearConv" not in ops["fp32"]
    assert all(sum(o["share"] for o in table.values()) == pytest.approx(1.0) for table in ops.values())
    assert "QLinearConv" in stdout.split("where onnxruntime CPU's time goes")[1]


@pytest.mark.slow
def test_cpu_contention_benchmark_runs(tmp_path):
    data, stdout = run_benchmark("cpu_contention.py", tmp_path / "cpu.json", "--set", "epochs=1",
                                 "--set", "model.kwargs.width=4", "--set", "data.val_size=50", "--set", "eval.n_val=20",
                                 "--set", "eval.n_test=20", "--set", "eval.n_train=20", "--set", "attack.steps=1")
    assert [r["threads"] for r in data["results"]] == ["idle cores (againzoo)", "all cores"]
    assert all(r["alone_s"] > 0 and r["busy_over_alone"] == pytest.approx(r["busy_s"] / r["alone_s"], rel=0.01)
               for r in data["results"])
    assert "busy/alone" in stdout


@pytest.mark.slow
def test_train_throughput_profile_and_extra_variants(tmp_path):
    data, stdout = run_benchmark("train_throughput.py", tmp_path / "p.json", "--batch", "8", "--steps", "1",
                                 "--warmup", "0", "--attack-steps", "2", "--variants",
                                 "again_pgd_at,again_pgd_at_checked", "--profile")
    assert [r["variant"] for r in data["results"]] == ["again_pgd_at", "again_pgd_at_checked"]
    # the trainer's step makes no host syncs; the model's value checks (the _checked variant) do
    assert data["results"][0]["host_syncs_per_step"] == 0 < data["results"][1]["host_syncs_per_step"]
    prof = data["results"][0]["profile"]
    assert prof["time"] == "cpu" and prof["ms_per_step"]["convolution"] > 0
    assert abs(sum(prof["share"].values()) - 1) < 1e-6
    assert data["checks_overhead"] is not None and "where again_pgd_at's step goes" in stdout


@pytest.mark.slow
def test_a_failing_variant_is_recorded_not_fatal(tmp_path):
    """A variant that fails (here: every one, an unknown backbone) leaves its error in the JSON."""
    out = tmp_path / "t.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--arch", "nope_net",
                          "--variants", "pgd_at", "--steps", "1", "--warmup", "0", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "every variant failed" in res.stderr
    data = json.loads(out.read_text())
    assert data["results"] == [] and data["failed"][0]["variant"] == "pgd_at" and "nope_net" in data["failed"][0]["error"]


def test_benchmark_variant_names():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from train_throughput import CPU_VARIANTS, EXTRA, VARIANTS, variant_settings
    finally:
        sys.path.pop(0)
    assert all(variant_settings(v) is not None for v in VARIANTS + EXTRA + CPU_VARIANTS)
    s = variant_settings("again_pgd_at_ema_compiled")
    assert (s["again"], s["method"], s["keys"], s["checked"]) == (True, "pgd_at", {"ema": {"decay": 0.999},
                                                                                 "compile": True}, False)
    assert variant_settings("pgd_at_cudagraphs")["keys"] == {"compile": True, "compile_mode": "reduce-overhead"}
    s = variant_settings("again_n_fgsm_bf16_cl_b256_t1_loader")
    assert (s["again"], s["method"], s["batch"], s["threads"], s["loader"]) == (True, "n_fgsm", 256, 1, True)
    assert s["keys"] == {"precision": "bf16", "channels_last": True}
    assert variant_settings("n_fgsm_fp32")["keys"] == {"precision": "fp32"}
    for bad in ("trades", "pgd_at_b", "pgd_at_x2", "n_fgsm_bf16x", "pgd_atx"):
        assert variant_settings(bad) is None, bad


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_the_compiled_training_step_matches_eager(tmp_path, mode):
    """compile: true (torch.compile of the backbone, inductor on CPU, in each compile_mode; CUDA graphs
    apply on CUDA only) trains a step of an AGAIN model to the same loss as eager, with the state_dict
    keys unchanged."""
    import torch

    from againzoo import recipes
    from againzoo.training.methods import METHODS, StepContext
    from againzoo.training.trainer import compile_model, device_setup, make_model, make_optimizer, train_step

    r = recipes.parse({"name": "c", "model": {"kwargs": {"width": 4}, "again": {"enabled": True, "hff": False}},
                       "attack": {"steps": 1, "random_start": False}, "batch_size": 8, "precision": "fp32"})
    losses, keys = [], []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = make_model(r, 10, {"pretrained_cfg_overlay": {"input_size": (3, 16, 16)}})
        if compiled:
            compile_model(model, mode)
        opt = make_optimizer(r, model, torch.device("cpu"))
        ctx = StepContext(model, r.attack, True, 1.0, 0.0, device_setup(r, torch.device("cpu")).autocast)
        torch.manual_seed(1)
        x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 10
        losses.append([float(train_step(ctx, METHODS["pgd_at"], opt, x, y)[0]) for _ in range(2)])
        keys.append(sorted(model.state_dict()))
    assert keys[0] == keys[1]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3, abs=1e-4)


def test_again_study_compares_each_variant_with_the_twin_on_its_own_seeds():
    """A partial study (the twin has run seed 1, the variant not yet): the difference from the twin is
    taken on the seeds both have, so it equals the per-seed difference beside it."""
    from againzoo.stats import to_bits

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from again_study import summarise
    finally:
        sys.path.pop(0)
    g = torch.Generator().manual_seed(0)
    bits = lambda p: to_bits(torch.rand(400, generator=g) < p)  # noqa: E731
    run = lambda v, seed, p: {"variant": v, "seed": seed, "train_seconds": 1.0, "clean": 0.5,  # noqa: E731
                              "worst_case": p, "per_example": {"worst_case": bits(p), "clean": bits(0.5)}}
    rows = {r["variant"]: r for r in summarise([run("twin", 0, 0.3), run("pred", 0, 0.25), run("twin", 1, 0.6)],
                                               ["twin", "pred"])["rows"]}
    w = rows["pred"]["worst_case"]
    assert w["diff"] == pytest.approx(w["per_seed_diff"][0])  # seed 1's much stronger twin left out
    assert rows["twin"]["seeds"] == [0, 1] and rows["pred"]["seeds"] == [0]


def test_again_study_refuses_to_train_a_run_in_another_precision_than_its_finished_runs(tmp_path, monkeypatch):
    """A study resumed on a CPU with native bf16 (``precision: auto``) would train its next run in bf16
    beside runs trained in fp32: it stops with one line naming both and the switch, before training."""
    import argparse

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from again_study import TINY, run_one
    finally:
        sys.path.pop(0)
    monkeypatch.setenv("AGAINZOO_CPU_BF16", "1")
    args = argparse.Namespace(set=[*TINY, "precision=auto"], device="cpu", data_dir=None, quiet=True)
    with pytest.raises(SystemExit) as e:
        run_one("cifar10_resnet18w16_again_study_cpu", tmp_path, "pred", 2, args, precisions=frozenset({"fp32"}))
    assert str(e.value).startswith("error: pred seed 2 would train in bf16 here (precision: auto)")
    assert "finished runs trained in fp32; set AGAINZOO_CPU_BF16=0" in str(e.value)
    assert not any(tmp_path.rglob("metrics.jsonl"))  # nothing was trained


@pytest.mark.slow
def test_again_study_runs_resumes_and_writes_its_table(tmp_path):
    """The study at the CI size: trains, evaluates, tabulates with intervals and a verdict; a second
    run reuses every finished run and replaces (not appends) its table in the results file."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nother measurements\n")
    args = ["--tiny", "--variants", "twin,paper,pred", "--seeds", "0", "--n", "12", "--aa-iter", "2",
            "--n-targets", "2", "--out", str(tmp_path / "runs"), "--results", str(results), "--quiet"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "again_study.py"), *args, "--json", str(tmp_path / "part.json")]
    # stopped during its first training (a session's end, SIGTERM): the record keeps the time spent
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not list((tmp_path / "runs").glob("twin_s0/*/recipe.yaml")):
            assert proc.poll() is None
            time.sleep(0.05)
        proc.terminate()
        assert proc.wait(timeout=60) == 1
        assert proc.stderr.read().splitlines()[-1].startswith("stopped: 0 of 3 runs in ")
    finally:
        proc.kill()
        proc.wait()
    stopped = json.loads((tmp_path / "part.json").read_text())["config"]
    assert stopped["runs_done"] == 0 and stopped["wall_seconds"] > 0
    # continued, and stopped after its first run (a GPU window's time limit): the record holds that run
    # already, and the wall time of both invocations
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().startswith("twin seed 0: clean")
    finally:
        proc.kill()
        proc.wait()
    part = json.loads((tmp_path / "part.json").read_text())
    assert part["config"]["wall_seconds"] > stopped["wall_seconds"]
    assert [r["variant"] for r in part["runs"]] == ["twin"] and part["config"]["complete"] is False
    assert (part["config"]["runs_done"], part["config"]["runs_planned"]) == (1, 3)
    data, stdout = run_benchmark("again_study.py", tmp_path / "study.json", *args)
    assert data["runs"][0]["per_example"] == part["runs"][0]["per_example"]  # the finished run was reused
    assert data["config"]["complete"] is True and "Partial" not in stdout
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"twin", "paper", "pred"} and rows["twin"]["gate"] is None
    for v in ("paper", "pred"):
        w = rows[v]["worst_case"]
        assert w["ci"][0] <= w["mean"] <= w["ci"][1] and w["diff_ci"][0] <= w["diff"] <= w["diff_ci"][1]
        assert w["seed_ci"][0] <= w["diff"] <= w["seed_ci"][1] and w["per_seed_diff"] == [pytest.approx(w["diff"])]
        assert 0 <= rows[v]["gate"]["follows_wrong"] <= 1
    assert data["verdict"]["text"] and "| `paper` |" in stdout
    assert data["time"]["runs"] == 3 and data["config"]["wall_seconds"] > 0
    assert all(r["machines"] and r["eval_seconds"] > 0 for r in data["runs"]) and "h of evaluation, on " in stdout
    first = results.read_text()
    assert first.startswith("# Results\n\nother measurements") and first.count("<!-- again-study:begin -->") == 1
    data2, stdout2 = run_benchmark("again_study.py", tmp_path / "study2.json", *args)
    assert [r["per_example"] for r in data2["runs"]] == [r["per_example"] for r in data["runs"]]  # reused
    assert results.read_text().count("<!-- again-study:begin -->") == 1
    shutil.rmtree(tmp_path / "runs")  # another machine: the record alone carries the finished runs
    data3, _ = run_benchmark("again_study.py", tmp_path / "study.json", *args)
    assert [r["per_example"] for r in data3["runs"]] == [r["per_example"] for r in data["runs"]]
    assert not (tmp_path / "runs").exists()  # nothing was trained or evaluated again
    # a window's partial record, tabulated here without training: the same numbers, marked partial
    _, stdout3 = run_benchmark("again_study.py", tmp_path / "tab.json", "--from-json", str(tmp_path / "part.json"),
                               "--results", str(results))
    assert "| `twin` |" in stdout3 and "| `paper` |" not in stdout3 and "Partial: 1 of 3 runs" in results.read_text()
    assert "**So far (1 of 3 runs; no verdict until all are in).**" in stdout3 and "**Verdict.**" not in stdout3
    assert stdout3.splitlines()[2] == stdout.splitlines()[stdout.splitlines().index(stdout3.splitlines()[0]) + 2]
