"""Gate diagnostics: does a gated model's prediction read the image, or copy its ASE gate?

AGAIN's inference gate multiplies the features by the ASE head's row ``W[argmax(aux)]`` (Eq. 4).
A final classifier trained behind the label-mixed gate can learn to decode which row gated it
instead of reading the features; its prediction is then a copy of the ASE head's argmax. One
forward pass per gate on images the caller already has (clean, and the suite's worst-case
adversarial examples) tells:

* ``acc``: accuracy as deployed (the model's own gate);
* ``ase_acc``: accuracy of the ASE head (the primary site's; ``ase_acc_sites``: every site's);
* ``agree``: how often the prediction equals the class whose row gated it (its own gate);
* ``oracle_acc``: accuracy with the true label's rows ``W[y]`` at every site;
* ``wrong_acc`` / ``follows_wrong``: accuracy with a wrong label's rows ``W[(y + 1) % C]``, and how
  often the prediction is then that wrong class;
* ``random_acc`` / ``follows_random``: the same with a random class's rows (seeded; the random
  class is the true one on about 1/C of the images, which ``follows_random`` leaves out).

A classifier that copies its gate is 100% accurate with the oracle gate and follows a wrong gate on
nearly every image; ``gate_shortcut`` is set when ``follows_wrong`` on clean images exceeds
:data:`SHORTCUT_THRESHOLD`. A model whose gate carries no class information (constant rows) follows
a wrong gate only by chance.
"""

from __future__ import annotations

from typing import Any

import torch

from .adapter import AgainModel
from .losses import aux_heads, primary_aux
from .runtime import model_device

SHORTCUT_THRESHOLD = 0.9
MEANING = ("gate_shortcut: the prediction follows a wrong gate on more than 90% of clean images, so the final "
           "classifier copies the ASE head's argmax instead of reading the image: the model is, in effect, the "
           "ASE head (a linear probe on the gated features) behind an argmax that hides gradients")


@torch.no_grad()
def gate_figures(model: AgainModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
                 seed: int = 0) -> dict[str, Any]:
    """The figures above on ``(x, y)`` (float [0, 1] NCHW, int labels), as fractions in [0, 1]."""
    was = model.training
    model.eval()
    dev = model_device(model)
    c = model.num_classes
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rand = torch.randint(0, c, (len(y),), generator=gen)
    sums = dict.fromkeys(("acc", "agree", "oracle_acc", "wrong_acc", "follows_wrong", "random_acc",
                          "follows_random"), 0.0)
    site_correct = None
    n_rand = 0
    try:
        for i in range(0, len(y), batch_size):
            xb, yb, rb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev), rand[i:i + batch_size].to(dev)
            logits, aux = model(xb, return_aux=True)
            heads = aux_heads(aux)
            pred = logits.argmax(1)
            gate_class = primary_aux(aux).argmax(1)
            correct = torch.stack([(a.argmax(1) == yb).sum() for a in heads]).cpu()
            site_correct = correct if site_correct is None else site_correct + correct
            wrong = (yb + 1) % c
            p_oracle = model(xb, force_gate=yb).argmax(1)
            p_wrong = model(xb, force_gate=wrong).argmax(1)
            p_rand = model(xb, force_gate=rb).argmax(1)
            off = rb != yb
            n_rand += int(off.sum())
            for key, v in (("acc", pred == yb), ("agree", pred == gate_class), ("oracle_acc", p_oracle == yb),
                           ("wrong_acc", p_wrong == yb), ("follows_wrong", p_wrong == wrong),
                           ("random_acc", p_rand == yb), ("follows_random", (p_rand == rb) & off)):
                sums[key] += int(v.sum())
    finally:
        model.train(was)
    n = len(y)
    out = {k: v / max(1, n) for k, v in sums.items()}
    out["follows_random"] = sums["follows_random"] / max(1, n_rand)
    sites = (site_correct.double() / max(1, n)).tolist() if site_correct is not None else []
    out["ase_acc"] = sites[-1] if sites else 0.0
    if len(sites) > 1:
        out["ase_acc_sites"] = sites
    out["n"] = n
    return out


def gate_diagnostics(model: AgainModel, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor | None = None,
                     y_adv: torch.Tensor | None = None, batch_size: int = 256, seed: int = 0) -> dict[str, Any]:
    """eval.json's ``gate`` block: the figures on clean images and, when given, on adversarial
    examples ``x_adv`` (labels ``y_adv``, default ``y``), and the ``gate_shortcut`` verdict."""
    clean = gate_figures(model, x, y, batch_size, seed)
    out: dict[str, Any] = {"sites": list(model.sites), "gate_source": model.gate_source, "clean": clean}
    if x_adv is not None and len(x_adv):
        out["adversarial"] = gate_figures(model, x_adv, y if y_adv is None else y_adv, batch_size, seed)
    out["gate_shortcut"] = clean["follows_wrong"] > SHORTCUT_THRESHOLD
    out["threshold"] = SHORTCUT_THRESHOLD
    out["meaning"] = MEANING
    return out


def describe(gate: dict[str, Any]) -> str:
    """One sentence for cards and logs."""
    c = gate["clean"]
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    head = (f"ASE head {pct(c['ase_acc'])}, with the true label's gate {pct(c['oracle_acc'])}, with a wrong label's "
            f"gate {pct(c['wrong_acc'])} (prediction follows it on {pct(c['follows_wrong'])})")
    if gate["gate_shortcut"]:
        return f"GATE SHORTCUT: the classifier copies its gate ({head})."
    return f"No gate shortcut ({head})."
