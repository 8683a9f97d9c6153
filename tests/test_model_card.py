"""MODEL_CARD.md is generated from the published models' records in zoo/ and must match them."""

from pathlib import Path

from againzoo.card import zoo_card

ROOT = Path(__file__).resolve().parents[1]


def test_model_card_is_regenerated_from_zoo_records():
    runs = sorted((ROOT / "zoo").iterdir(), key=lambda p: (p.name == "quickstart", p.name))
    assert runs, "zoo/ holds each published model's config.json, eval.json and metrics.jsonl"
    expected = zoo_card(runs)
    assert (ROOT / "MODEL_CARD.md").read_text() == expected, (
        "MODEL_CARD.md is stale: regenerate it with `againzoo card zoo/<run> ... -o MODEL_CARD.md`")
