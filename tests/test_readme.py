"""The docs are executable: every ``bash`` and ``python`` block of README.md, the pages of docs/ (in
the order the README links them) and export/README.md runs here, in order, in a copy of the
repository, so an example can never drift from the code.

Documented substitutions (the only ones), for CI's 2 cores and no network:

* ``python3 -m venv ... && pip install ... && CMD`` runs ``CMD`` (the set-up part is what CI itself
  runs); ``pip install`` lines and the test command itself (``python -m pytest``) are not re-run;
* ``againzoo train`` (not ``--resume``) and ``againzoo zoo build`` get the tiny overrides
  :data:`TINY_TRAIN` appended (the digits dataset, width 4, one epoch, one-step attacks);
  ``againzoo eval`` and ``zoo build`` get ``-n 8 --aa-budget 2,2,5``; ``zoo deployed`` gets the same,
  ``--dataset digits`` and ``--precision fp32``; ``evaluate(...)`` gets :data:`TINY_EVAL`;
* ``torchrun ... againzoo train`` runs through ``python -m torch.distributed.run`` with the same tiny
  overrides and one CPU thread per process;
* optional arguments written in brackets (``[--private]``) are dropped;
* ``cat.png``, ``ship.png``, ``ship.jpg`` and ``batch.npy`` are made from digits test images, and
  ``predict.py`` / ``from predict import`` resolve to ``export/`` (the serving machine's copy);
* a line marked ``needs the Hub`` runs offline and must fail at once with a one-line error (a
  :class:`UserError` for againzoo's own calls); a line marked ``needs a GPU`` is not run here.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from againzoo.cli import app
from againzoo.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["model", "training", "gpu", "evaluation", "zoo", "onnx", "analysis", "benchmarks"]
DOCS = [ROOT / "README.md", *(ROOT / "docs" / f"{p}.md" for p in PAGES), ROOT / "export" / "README.md"]
TINY_TRAIN = ["model.kwargs.width=4", "epochs=1", "data.dataset=digits", "data.val_size=50", "eval.n_val=20",
              "eval.n_test=20", "eval.n_train=20", "attack.steps=1", "eval.attack_steps=1", "batch_size=64",
              "log_every=1000"]
TINY_EVAL_ARGS = ["-n", "8", "--aa-budget", "2,2,5"]
TINY_EVAL = ", aa_budget={'n_iter': 2, 'n_targets': 2, 'n_queries': 5}, pgd_steps=(2,), cw_steps=2, aa_iter=3, " \
            "n_targets=2, n_check=8"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str, str]]:
    """(where, language, code) of every bash/python block, in reading order."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) in ("bash", "python"):
                line = text[: m.start()].count("\n") + 1
                out.append((f"{doc.relative_to(ROOT)}:{line}", m.group(1), m.group(2)))
    return out


def test_the_readmes_have_the_blocks_this_test_runs():
    langs = [lang for _, lang, _ in blocks()]
    assert langs.count("bash") >= 8 and langs.count("python") >= 4
    assert sorted(p.stem for p in (ROOT / "docs").glob("*.md")) == sorted(PAGES)  # every page is run
    readme = (ROOT / "README.md").read_text()
    assert all(f"docs/{p}.md" in readme for p in PAGES)  # and linked from the front page


def test_the_layout_names_every_module_of_the_package():
    """README's Layout lists the package's modules and subpackages: a new module cannot hide from it."""
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]
    listed = {w.removesuffix("(.json)") for w in layout.split("againzoo/", 1)[1].split("hubconf.py", 1)[0].split()}
    pkg = ROOT / "againzoo"
    actual = {p.name for p in pkg.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    actual |= {f"{p.name}/" for p in pkg.iterdir() if (p / "__init__.py").exists()}
    assert listed == actual, f"missing: {sorted(actual - listed)}; gone: {sorted(listed - actual)}"


def test_the_deploy_section_quotes_the_recorded_int8_verdicts():
    """README's sentence on int8 quotes the deployed records: every published model's int8 agreement, refused."""
    import json

    text = " ".join((ROOT / "README.md").read_text().split("## Deploy it", 1)[1].split("\n## ", 1)[0].split())
    deployed = sorted((ROOT / "zoo").glob("*/deployed.json"))
    assert len(deployed) >= 2
    for path in deployed:
        record = json.loads(path.read_text())["records"]["int8"]
        assert "refused" in record and f"{100 * record['verification']['top1_agreement']:.1f}%" in text, path
    assert "refused" in text


def test_the_front_page_has_setup_models_and_a_working_example_first():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:60])
    assert "pip install -e . && againzoo train quickstart" in head and "<!-- test-command -->" in head
    assert "<!-- models:begin -->" in head and "<!-- models:end -->" in head
    assert 'torch.hub.load(".", "' in head and "label_names" in head


def test_which_to_use_and_the_front_page_example_name_the_best_published_model():
    """"Which to use" recommends, and the first example loads, the published CIFAR-10 model with the
    highest adaptive worst case in the registry (the figure the table is sorted by)."""
    import json

    entries = json.loads((ROOT / "againzoo" / "registry.json").read_text())["entries"]
    best = max((e for e in entries if e["dataset"] == "cifar10"), key=lambda e: e["metrics"]["worst_case"])
    readme = (ROOT / "README.md").read_text()
    which = readme.split("**Which to use.**", 1)[1].split("\n\n", 1)[0]
    assert re.findall(r"`([a-z0-9_]+)`", which)[0] == best["model"], which
    assert f'torch.hub.load(".", "{best["model"]}", source="local", pretrained=True)' in readme


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the checkout (no .git, venv or runs) with the sample images the README names."""
    dst = tmp_path_factory.mktemp("readme") / "againzoo"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "out", ".data", ".whl",
                                                             "__pycache__", "*.onnx", "analysis", "my_ckpt"))
    from againzoo.data import load_dataset
    from PIL import Image

    ds = load_dataset("digits", "test")
    for name, i in (("cat.png", 0), ("ship.png", 1), ("ship.jpg", 2)):
        Image.fromarray(ds.x[i]).save(dst / name)
    np.save(dst / "batch.npy", ds.x[:4].transpose(0, 3, 1, 2))  # uint8 (N, C, H, W)
    return dst


def _bash_commands(code: str) -> list[tuple[str, list[str]]]:
    """(marker, argv) per command line, after the documented substitutions."""
    out = []
    for raw in code.splitlines():
        marker = "hub" if "needs the Hub" in raw else "gpu" if "needs a GPU" in raw else ""
        line = re.sub(r"\s*\[[^\]]*\]", "", raw)
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        if "&&" in argv:  # set-up chain: run what follows the installs
            cut = max(i for i, a in enumerate(argv) if a == "&&")
            if any(a == "install" for a in argv[:cut]):
                argv = argv[cut + 1:]
        if argv[:2] == ["pip", "install"] or argv[1:4] == ["-m", "pytest", "-q"] or argv[:3] == ["python", "-m", "pytest"]:
            continue
        out.append((marker, argv))
    return out


REFUSED: set[str] = set()  # int8 files the export's check refused in this run of the docs


def _refused_int8(args: list[str], code: int, output: str) -> bool:
    """Whether ``againzoo export ... --precision int8`` refused its file, as documented: the docs' models
    are one-epoch, chance-level ones whose near-tied logits int8 may flip on more than 1% of the images
    (how many depends on the CPU's int8 kernels), so the check's one-line refusal, with no file written,
    is the other correct outcome; what then uses the file must fail in one line naming it."""
    if args[0] != "export" or "int8" not in args or code != 2:
        return False
    out = args[args.index("-o") + 1]
    assert len(output.strip().splitlines()) == 1 and "was not written: it agrees with PyTorch on" in output, output
    assert not Path(out).exists()
    REFUSED.add(out)
    return True


def _uses_a_refused_file(argv: list[str], code: int, output: str, where: str) -> bool:
    """A command that reads a refused int8 file fails with one line that names it."""
    name = next((a for a in argv if a in REFUSED), None)
    if name is None:
        return False
    assert code != 0 and name in output.strip().splitlines()[-1], (where, argv, output)
    return True


def _run_againzoo(args: list[str], marker: str, where: str) -> None:
    if args[0] == "train" and "--resume" not in args or args[:2] == ["zoo", "build"]:
        args = args + [x for o in TINY_TRAIN for x in ("--set", o)]
    if args[0] == "eval" or args[:2] == ["zoo", "build"]:
        args = args + TINY_EVAL_ARGS
    if args[:2] == ["zoo", "deployed"]:  # where zoo build put it (digits); the fp32 export only (a one-epoch
        args = args + TINY_EVAL_ARGS + ["--dataset", "digits", "--precision", "fp32"]  # model's int8 is no test
    res = CliRunner().invoke(app, args)
    if _refused_int8(args, res.exit_code, res.output) or _uses_a_refused_file(args, res.exit_code, res.output, where):
        return
    if marker == "hub":
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, (where, args, res.output)
        return
    assert res.exit_code == 0, (where, args, res.output, res.exception)


def _run_python_cli(argv: list[str], repo: Path, where: str) -> None:
    if argv[1] == "predict.py":
        argv = [argv[0], "export/predict.py", *argv[2:]]
    res = subprocess.run([sys.executable, *argv[1:]], cwd=repo, capture_output=True, text=True, timeout=600)
    if _uses_a_refused_file(argv, res.returncode, res.stderr, where):
        return
    assert res.returncode == 0, (where, argv, res.stderr[-2000:])


def _run_torchrun(argv: list[str], repo: Path, where: str) -> None:
    if "train" in argv and "--resume" not in argv:
        argv = argv + [x for o in TINY_TRAIN for x in ("--set", o)]
    bindir = str(Path(sys.executable).parent)  # where the againzoo console script is
    env = {**os.environ, "AGAINZOO_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")])}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", *argv[1:]], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (where, argv, res.stderr[-2000:])


def _run_python(code: str, ns: dict, where: str) -> None:
    code = code.replace('suite="full", eps=8/255)', f'suite="full", eps=8/255{TINY_EVAL})')
    tree = ast.parse(code)
    lines = code.splitlines()
    for node in tree.body:
        src = "\n".join(lines[node.lineno - 1: node.end_lineno])
        stmt = compile(ast.Module([node], []), where, "exec")
        if "needs the Hub" in src:
            kind = Exception if "torch.hub.load(" in src or "timm.create_model(" in src else UserError
            with pytest.raises(kind) as e:
                exec(stmt, ns)
            assert "\n" not in str(e.value).strip() or kind is Exception, (where, src, str(e.value))
        else:
            exec(stmt, ns)


@pytest.mark.slow
def test_every_readme_block_runs(repo, monkeypatch):
    monkeypatch.chdir(repo)
    monkeypatch.setenv("AGAINZOO_REGISTRY", str(repo / "againzoo" / "registry.json"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(repo / ".hf"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(repo / "export"))
    ns: dict = {"__name__": "__readme__"}
    REFUSED.clear()
    ran = 0
    for where, lang, code in blocks():
        if lang == "python":
            _run_python(code, ns, where)
            ran += 1
            continue
        for marker, argv in _bash_commands(code):
            if marker == "gpu":
                continue
            if argv[0] == "againzoo":
                _run_againzoo(argv[1:], marker, where)
            elif argv[0] in ("python", "python3"):
                _run_python_cli(argv, repo, where)
            elif argv[0] == "torchrun":
                _run_torchrun(argv, repo, where)
            else:
                pytest.fail(f"{where}: no rule to run {argv[0]!r}: {shlex.join(argv)}")
            ran += 1
    assert ran >= 25
    # what the examples produced, where the README says they would be
    for path in ("runs/quickstart/best/model.safetensors", "runs/cifar10_resnet18_again_pgd_at/best/eval.json",
                 "runs/cifar10_resnet18_again_awp/state/state.safetensors", "model.onnx", "MODEL_CARD.md",
                 "analysis/asc.png", "my_ckpt/model.safetensors", "runs/ddp/quickstart/model.safetensors"):
        assert (repo / path).exists(), path
    assert (repo / "model_int8.onnx").exists() or "model_int8.onnx" in REFUSED  # written, or refused in one line


def _study_table() -> tuple[str, list[dict[str, str]]]:
    """The AGAIN study's table that carries the verdict: the current study's once it is complete,
    the earlier proxy's until then; its rows as {column: cell}."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()

    def block(tag: str) -> str:
        return text.split(f"<!-- {tag}:begin -->", 1)[1].split(f"<!-- {tag}:end -->", 1)[0]

    current = block("again-study")
    body = current if "| variant |" in current and "Partial:" not in current else block("again-study-w8")
    lines = [ln for ln in body.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return body, [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def test_the_again_study_verdict_in_words_agrees_with_its_table():
    """README's "Which to use", the card's "Read this first" (zoo/NOTES.md, and MODEL_CARD.md built from
    it) and references.AGAIN_CAVEAT say what the study's table says: whether a sound AGAIN variant
    beats its twin beyond every interval of its row, and over how many seeds."""
    from againzoo.references import AGAIN_CAVEAT

    body, rows = _study_table()
    beats = []
    for r in rows:
        diff = next(v for k, v in r.items() if k.startswith("vs twin, points"))
        intervals = [tuple(float(x) for x in m) for m in re.findall(r"\[([-+0-9.]+), ([-+0-9.]+)\]", diff)]
        if r["shortcut (seeds)"].startswith("no") and intervals and all(lo > 0 for lo, _ in intervals):
            beats.append(r["variant"].strip("`"))
    seeds = {len(r["per seed"].split(" / ")) for r in rows}
    assert len(seeds) == 1, "every variant of the table has the same seeds"
    words = {2: "two seeds", 3: "three seeds", 4: "four seeds", 5: "five seeds"}[seeds.pop()]
    verdict = body.split("**Verdict.**", 1)[1].split("\n", 1)[0]
    assert ("beats the twin by" in verdict) == bool(beats), verdict  # the table's own sentence
    readme = (ROOT / "README.md").read_text().split("**Which to use.**", 1)[1].split("\n\n", 1)[0]
    notes = (ROOT / "zoo" / "NOTES.md").read_text()
    card = (ROOT / "MODEL_CARD.md").read_text()
    for where, said in (("README.md", readme), ("zoo/NOTES.md", notes), ("MODEL_CARD.md", card),
                        ("references.AGAIN_CAVEAT", AGAIN_CAVEAT)):
        said = " ".join(said.split())
        if beats:
            assert any(re.search(rf"`?{v}`? beats (its|the) twin", said) for v in beats), where
        else:
            assert re.search(r"no AGAIN variant beats? (its twin|the twin|the same recipe without AGAIN)", said,
                             re.IGNORECASE), where
        assert words in said, f"{where} should name the study's seeds ({words})"
