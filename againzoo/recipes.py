"""Training recipes: YAML parsed into typed, validated pydantic models.

Every section forbids unknown keys; a mistake raises :class:`~againzoo.errors.ConfigError` with
the key path and the allowed keys or values, before any work starts. ``--set a.b=value``
overrides are applied to the raw YAML before validation, so they are checked the same way.

Budgets (``eps``, ``step_size``) accept numbers or fractions written as strings (``"8/255"``).

The AGAIN probability schedule (section 4.3: "original AT with high probability early, AGAIN
more often as training goes on") is a linear ramp. For epoch ``e`` (0-based)::

    p(e) = start + (end - start) * min(1, (e + 1) / ramp_epochs)      (p = end if ramp_epochs == 0)

and each batch independently applies AGAIN with probability ``p(e)``; ``ramp_epochs`` defaults to
a quarter of the epochs. The paper does not publish its exact schedule; this is ours.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def parse_number(v: Any) -> Any:
    """``"8/255"`` -> 0.0313...; numbers pass through."""
    if isinstance(v, bool):  # YAML's true/false would pass as 1.0/0.0
        raise ValueError(f"expected a number or a fraction like '8/255', got {v!r}")
    if isinstance(v, str):
        try:
            return float(Fraction(v.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a number or a fraction like '8/255', got {v!r}") from None
    return v


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """YAML's true/false would pass as 1/0 where a number is expected (pydantic's lax mode)."""
        if isinstance(data, dict):
            for key, field in cls.model_fields.items():
                kinds = get_args(field.annotation) if get_origin(field.annotation) is Union else (field.annotation,)
                if isinstance(data.get(key), bool) and any(k in (int, float) for k in kinds):
                    raise ValueError(f"'{key}' expects a number, got {str(data[key]).lower()}")
        return data


class AgainSchedule(Section):
    """Probability of applying AGAIN to a batch, ramped linearly over epochs."""

    start: float = Field(0.0, ge=0, le=1)
    end: float = Field(1.0, ge=0, le=1)
    ramp_epochs: Optional[int] = Field(None, ge=0)

    def probability(self, epoch: int, epochs: int) -> float:
        ramp = self.ramp_epochs if self.ramp_epochs is not None else max(1, epochs // 4)
        if ramp == 0:
            return self.end
        return self.start + (self.end - self.start) * min(1.0, (epoch + 1) / ramp)


class AgainOptions(Section):
    """AGAIN's options (see :class:`againzoo.adapter.AgainModel` and :mod:`againzoo.ase`).

    The paper's form is the default: one site (the last feature stage), the label-mixed training
    gate of Eq. 4 (``gate_source: label``), alpha 0.6, HFF, ``aux_weight`` 1. ``layer`` may list
    several sites (``[layer4.1.conv1:input, layer4]``: the authors' code's two sites, with
    ``aux_weight: 2``, the mean of the heads' CEs counted twice); ``gate_source: pred`` or ``soft``
    trains with label-free gates; ``detach_gate`` trains the gate rows by the ASE term only."""

    enabled: bool = True
    layer: Optional[Union[str, list[str]]] = None
    alpha: float = Field(0.6, ge=0.5, le=1.0)
    aux_weight: float = Field(1.0, ge=0)
    hff: bool = True
    per_sample_gammas: bool = False
    gate_source: Literal["label", "pred", "soft"] = "label"
    detach_gate: bool = False
    schedule: AgainSchedule = AgainSchedule()

    @field_validator("layer")
    @classmethod
    def _sites(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("a list of AGAIN sites must be non-empty and name each site once")
        return v

    def model_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`againzoo.adapter.AgainModel` this section sets."""
        return {"layer": self.layer, "alpha": self.alpha, "hff": self.hff, "aux_weight": self.aux_weight,
                "per_sample_gammas": self.per_sample_gammas, "gate_source": self.gate_source,
                "detach_gate": self.detach_gate}


class ModelSection(Section):
    arch: str = "resnet18_cifar"
    kwargs: dict[str, Any] = {}
    again: AgainOptions = AgainOptions()


class DataSection(Section):
    dataset: Literal["cifar10", "cifar100", "digits"] = "cifar10"
    data_dir: Optional[str] = None
    source: Literal["auto", "pickle", "npz", "folder", "torchvision"] = "auto"
    download: bool = False
    augment: Literal["crop_flip", "flip", "none"] = "crop_flip"
    val_size: int = Field(1000, ge=0)
    # train on a fixed random subset of this many images (after the held-out slice): quick studies
    limit: Optional[int] = Field(None, ge=1)


class AttackSection(Section):
    """The training attack; ``step_size: null`` means ``2.5 * eps / steps`` (Madry et al.), 1.25 eps for
    ``fgsm_rs`` and eps for ``n_fgsm``; ``noise`` is N-FGSM's uniform noise (null: 2 eps)."""

    eps: float = Field(8 / 255, gt=0, le=1)  # images are in [0, 1]
    step_size: Optional[float] = Field(None, gt=0)
    steps: int = Field(10, ge=1)
    random_start: bool = True
    norm: Literal["Linf", "L2"] = "Linf"
    bn_mode: Literal["eval", "train"] = "eval"
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # of the attack's CE; off unless asked
    noise: Optional[float] = Field(None, ge=0, le=1)

    _numbers = field_validator("eps", "step_size", "noise", mode="before")(parse_number)


class AwpOptions(Section):
    """Adversarial weight perturbation (Wu et al. 2020)."""

    gamma: float = Field(0.01, gt=0)
    warmup_epochs: int = Field(0, ge=0)
    proxy_lr: float = Field(0.01, gt=0)


class MethodSection(Section):
    """``label_smoothing`` smooths the cross-entropy terms of the training loss (Szegedy et al. 2016):
    the CE of PGD-AT / FGSM-RS / standard, TRADES' natural CE, the CE inside MART's boosted CE, and
    the ASE term of Eq. 7. KL terms (TRADES, MART) and margins are left as they are."""

    name: Literal["standard", "pgd_at", "trades", "mart", "fgsm_rs", "n_fgsm"] = "pgd_at"
    beta: Optional[float] = Field(None, ge=0)
    awp: Optional[AwpOptions] = None
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> "MethodSection":
        if self.beta is not None and self.name not in ("trades", "mart"):
            raise ValueError(f"beta only applies to trades and mart, not {self.name}")
        if self.awp is not None and self.name in ("standard", "fgsm_rs", "n_fgsm"):
            raise ValueError(f"awp combines with pgd_at, trades or mart, not {self.name}")
        return self


class OptimizerSection(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    nesterov: bool = False
    fused: Optional[bool] = None  # PyTorch's fused kernel; None: on CUDA (the for-loop one on CPU)


class LRSchedule(Section):
    """``multistep``: lr * gamma^k after each milestone epoch; ``onecycle``: linear up to ``lr`` at
    ``pct_start`` of training, linear down to 0; ``cosine``; ``constant``. Stepped per iteration."""

    name: Literal["multistep", "onecycle", "cosine", "constant"] = "multistep"
    milestones: list[Annotated[int, Field(ge=1)]] = [75, 90, 100]
    gamma: float = Field(0.1, gt=0)
    pct_start: float = Field(0.4, gt=0, lt=1)
    warmup_epochs: float = Field(0.0, ge=0)


class EmaSection(Section):
    """Weight averaging: an exponential moving average of every parameter and buffer of the whole
    model (backbone, ASE head, BN statistics), kept by ``timm.utils.ModelEmaV3`` and updated after
    every optimiser step. At update ``t`` (1-based) the average becomes
    ``ema = d_t * ema + (1 - d_t) * weights`` with ``d_1 = 0`` (a copy) and ``d_t = decay``, or with
    ``warmup`` ``d_t = min(decay, 1 - (1 + (t - 1) / warmup_gamma) ** -warmup_power)``.
    When on, monitoring, best-checkpoint selection and the saved weights use the average."""

    decay: float = Field(0.9995, gt=0, lt=1)
    warmup: bool = False
    warmup_power: float = Field(0.75, gt=0)
    warmup_gamma: float = Field(1.0, gt=0)


class EvalSection(Section):
    """Per-epoch monitoring; the best checkpoint is chosen on the held-out slice of the train set.
    Catastrophic overfitting (:mod:`againzoo.training.overfitting`) is flagged when the held-out PGD
    accuracy falls below ``co_ratio`` times its best and by at least ``co_min_drop``; ``stop_on_co``
    ends the run at the flagged epoch."""

    every: int = Field(1, ge=1)
    attack_steps: int = Field(10, ge=1)
    n_val: int = Field(1000, ge=0)
    n_test: int = Field(1000, ge=0)
    n_train: int = Field(1000, ge=0)
    co_ratio: float = Field(0.5, gt=0, le=1)
    co_min_drop: float = Field(0.1, ge=0, le=1)
    stop_on_co: bool = True


class Recipe(Section):
    # the run directory's name under output_dir: never a path (no '/', no '..')
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    description: str = ""
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    method: MethodSection = MethodSection()
    attack: AttackSection = AttackSection()
    optimizer: OptimizerSection = OptimizerSection()
    lr_schedule: LRSchedule = LRSchedule()
    ema: Optional[EmaSection] = None
    epochs: int = Field(120, ge=1)
    batch_size: int = Field(128, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16
    channels_last: Optional[bool] = None  # None: where the step runs in bf16 (and on CUDA)
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over all ranks (SyncBatchNorm)
    # torch.compile of the backbone (inductor; the AGAIN hooks are traced), in torch.compile's mode
    # (reduce-overhead: CUDA graphs on CUDA): off until a GPU window has measured it against eager
    # (benchmarks/train_throughput.py, the *_compiled variants)
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    seed: int = Field(0, ge=0, le=2**32 - 1)
    eval: EvalSection = EvalSection()
    output_dir: str = "runs"
    log_every: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        if self.method.name == "n_fgsm" and self.attack.norm != "Linf":
            raise ValueError("method.name n_fgsm is an L-inf method: set attack.norm to Linf")
        if self.lr_schedule.name == "multistep" and any(m > self.epochs for m in self.lr_schedule.milestones):
            raise ValueError(f"lr_schedule.milestones {self.lr_schedule.milestones} exceed epochs={self.epochs} "
                             "(--set epochs=N alone scales the recipe's milestones; or set lr_schedule.milestones)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# -- errors --------------------------------------------------------------------------------

def _section_at(loc: tuple[Any, ...]) -> Optional[type[BaseModel]]:
    """The pydantic class that owns the key at ``loc`` (to list its allowed keys)."""
    cls: Any = Recipe
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        if get_origin(ann) is Union:
            ann = next((a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


def format_error(err: ValidationError, source: str) -> str:
    """One line per problem: the key path, what is wrong, and what is allowed."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            cls = _section_at(loc)
            allowed = ", ".join(cls.model_fields) if cls else "?"
            lines.append(f"{source}: unknown key '{path}' (allowed: {allowed})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = "" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"  # a section: msg names the key
            lines.append(f"{source}: {path}: {msg}{got}" if loc else f"{source}: {msg}")
    return "; ".join(lines)


# -- loading -------------------------------------------------------------------------------

def scale_milestones(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Shortening (or lengthening) a recipe with ``--set epochs=N`` scales its multistep milestones by
    ``N / epochs`` (rounded, at least 1, duplicates dropped), unless the milestones are set too:
    ``--set epochs=60`` turns a 120-epoch recipe's [75, 90, 100] into [38, 45, 50]. Other epoch counts
    (the AGAIN ramp, the AWP warm-up, monitoring) are kept as written."""
    keys = [o.split("=", 1)[0].strip() for o in overrides or [] if "=" in o]
    if not isinstance(raw, dict):
        return raw  # parse() reports it
    sched = raw.get("lr_schedule")
    if ("epochs" not in keys or any(k.startswith("lr_schedule.milestones") or k == "lr_schedule" for k in keys)
            or not isinstance(sched, dict) or sched.get("name", "multistep") != "multistep"
            or not isinstance(sched.get("milestones"), list)
            or not isinstance(raw.get("epochs", Recipe.model_fields["epochs"].default), int)):
        return raw
    old = raw.get("epochs", Recipe.model_fields["epochs"].default)
    new = yaml.safe_load(next(o for o in reversed(overrides or []) if o.split("=", 1)[0].strip() == "epochs")
                         .split("=", 1)[1])
    if not isinstance(new, int) or new < 1 or old < 1:
        return raw  # validation reports the bad value
    scaled = sorted({max(1, round(m * new / old)) for m in sched["milestones"] if isinstance(m, (int, float))})
    sched["milestones"] = scaled
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a raw recipe dict."""
    raw = scale_milestones(raw, overrides)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key.path=value, got {item!r}")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise ConfigError(f"--set {key}: '{p}' is not a section")
            node = node[p]
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key.strip()}: cannot read {value!r} as a YAML value "
                              f"({str(e).splitlines()[0]})") from None
    return raw


def resolve_path(recipe: str | Path) -> Path:
    """A recipe file path, or the name of a shipped recipe (``quickstart``)."""
    path = Path(recipe)
    if path.exists():
        return path
    shipped = RECIPES_DIR / f"{recipe}.yaml"
    if shipped.exists():
        return shipped
    names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise ConfigError(f"recipe {recipe!r} not found (not a file; shipped recipes: {names})")


def parse(raw: Any, source: str = "recipe") -> Recipe:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of recipe keys, got {type(raw).__name__}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_error(e, source)) from None


def load(recipe: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe (a path or a shipped recipe's name)."""
    path = resolve_path(recipe)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the recipe: {e}") from None
    if raw is None:
        raise ConfigError(f"{path}: the recipe is empty: expected a mapping of recipe keys (at least name:)")
    if not isinstance(raw, dict):
        return parse(raw, str(path.name))  # raises: not a mapping
    return parse(apply_overrides(raw, overrides), str(path.name))


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def shipped() -> dict[str, str]:
    """Shipped recipe names and their one-line descriptions."""
    out = {}
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        raw = yaml.safe_load(p.read_text()) or {}
        out[p.stem] = str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""
    return out
