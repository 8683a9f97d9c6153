import pytest
import yaml
from typer.testing import CliRunner

from againzoo import recipes
from againzoo.cli import app
from againzoo.errors import ConfigError
from againzoo.recipes import AgainSchedule, RECIPES_DIR

SHIPPED = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
REQUIRED = ["cifar10_resnet18_pgd_at", "cifar10_resnet18_again_pgd_at", "cifar10_resnet18_trades",
            "cifar10_resnet18_mart", "cifar10_resnet18_again_mart", "cifar10_resnet18_awp",
            "cifar10_resnet18_again_awp", "cifar10_wrn34_10_again_awp", "cifar100_resnet18_again_pgd_at",
            "cifar100_resnet18_again_awp", "cifar10_resnet18_again_pgd_at_fast", "quickstart"]
PAPER = [n for n in REQUIRED if not n.endswith("_fast") and n != "quickstart"]  # section 5.2.1 settings


def test_required_recipes_are_shipped():
    assert set(REQUIRED) <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_validates(name):
    r = recipes.load(name)
    assert r.name == name and r.description
    if name in PAPER:
        # the paper's settings, section 5.2.1
        assert (r.optimizer.name, r.optimizer.lr, r.epochs) == ("sgd", 0.1, 120)
        assert r.lr_schedule.milestones == [75, 90, 100] and r.attack.steps == 10
        assert r.attack.eps == pytest.approx(8 / 255)
        if r.model.again.enabled:
            assert r.model.again.alpha == 0.6


def test_overrides_and_fractions():
    r = recipes.load("quickstart", ["attack.eps=16/255", "epochs=2", "model.again.alpha=0.75"])
    assert r.attack.eps == pytest.approx(16 / 255) and r.epochs == 2 and r.model.again.alpha == 0.75


def test_schedule_formula():
    s = AgainSchedule(start=0.2, end=1.0, ramp_epochs=4)
    assert [round(s.probability(e, 10), 3) for e in range(6)] == [0.4, 0.6, 0.8, 1.0, 1.0, 1.0]
    assert AgainSchedule(ramp_epochs=0).probability(0, 10) == 1.0
    assert AgainSchedule().probability(0, 8) == 0.5  # default ramp: a quarter of the epochs


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": {"agian": {}}}, "unknown key 'model.agian' (allowed: arch, kwargs, again)"),
        ({"epochs": "many"}, "epochs: Input should be a valid integer"),
        ({"attack": {"eps": "-8/255"}}, "attack.eps: Input should be greater than 0"),
        ({"data": {"dataset": "imagenet"}}, "data.dataset: Input should be 'cifar10', 'cifar100' or 'digits'"),
        ({"method": {"name": "pgd_at", "beta": 6}}, "beta only applies to trades and mart"),
        ({"model": {"again": {"alpha": 0.3}}}, "model.again.alpha: Input should be greater than or equal to 0.5"),
        # the weight-averaging section
        ({"ema": {"decay": 1.0}}, "ema.decay: Input should be less than 1"),
        ({"ema": {"decay": 0}}, "ema.decay: Input should be greater than 0"),
        ({"ema": {"decay": 0.999, "tau": 0.9}}, "unknown key 'ema.tau' (allowed: decay, warmup, warmup_power, warmup_gamma)"),
        ({"ema": {"warmup": "sometimes"}}, "ema.warmup: Input should be a valid boolean"),
        ({"method": {"label_smoothing": 1.0}}, "method.label_smoothing: Input should be less than 1"),
    ],
)
def test_malformed_recipe_one_line_error(tmp_path, change, message):
    raw = yaml.safe_load((RECIPES_DIR / "quickstart.yaml").read_text())
    for k, v in change.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    raw["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        recipes.load(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and message in result.output
    assert not (tmp_path / "runs").exists()  # it failed before any work


def test_missing_dataset_cli_error(tmp_path):
    result = CliRunner().invoke(app, ["train", "cifar10_resnet18_pgd_at", "--data-dir", str(tmp_path),
                                      "--set", f"output_dir={tmp_path}"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cifar10 (train) not found" in result.output and "cifar10-jpeg75.npz" in result.output


def test_recipes_command_lists_descriptions():
    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0
    assert "quickstart" in result.output and "AGAIN-AWP" in result.output


def test_set_epochs_scales_multistep_milestones():
    """The README's own example: shortening a 120-epoch paper recipe scales its LR milestones."""
    r = recipes.load("cifar10_resnet18_again_awp", ["epochs=60", "batch_size=256"])
    assert r.epochs == 60 and r.lr_schedule.milestones == [38, 45, 50]
    r = recipes.load("cifar10_resnet18_again_awp", ["epochs=2"])
    assert r.lr_schedule.milestones == [1, 2]  # rounded, at least 1, duplicates dropped
    r = recipes.load("cifar10_resnet18_again_awp", ["epochs=60", "lr_schedule.milestones=[30, 50]"])
    assert r.lr_schedule.milestones == [30, 50]  # set explicitly: kept
    assert recipes.load("cifar10_resnet18_again_awp").lr_schedule.milestones == [75, 90, 100]
