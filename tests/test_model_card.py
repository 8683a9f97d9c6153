"""MODEL_CARD.md is generated from the published models' records in zoo/ and must match them."""

from pathlib import Path

from againzoo.zoo import card_text

ROOT = Path(__file__).resolve().parents[1]


def test_model_card_is_regenerated_from_zoo_records():
    assert any((p / "eval.json").exists() for p in (ROOT / "zoo").iterdir()), (
        "zoo/ holds each published model's config.json, eval.json and metrics.jsonl")
    assert (ROOT / "MODEL_CARD.md").read_text() == card_text(ROOT / "zoo"), (
        "MODEL_CARD.md is stale: regenerate it with `againzoo card zoo/<run> ... -o MODEL_CARD.md`")


def test_model_card_has_hub_metadata_for_every_model():
    """huggingface_hub reads MODEL_CARD.md's YAML header: pipeline_tag, and every model's results
    (the Hub's parser keeps one model name per card, so the names are checked in the YAML itself)."""
    import yaml
    from huggingface_hub import ModelCard

    text = (ROOT / "MODEL_CARD.md").read_text()
    card = ModelCard.load(ROOT / "MODEL_CARD.md")
    assert card.data.pipeline_tag == "image-classification" and card.data.library_name == "againzoo"
    index = yaml.safe_load(text.split("---\n")[1])["model-index"]
    runs = [p for p in (ROOT / "zoo").iterdir() if p.is_dir() and (p / "eval.json").exists()]
    assert len(index) == len(runs)
    assert len(card.data.eval_results) == sum(len(r["metrics"]) for m in index for r in m["results"]) > 0


def test_the_readme_models_table_is_generated_from_the_records():
    from againzoo.card import MODELS_BEGIN, MODELS_END, models_table

    text = (ROOT / "README.md").read_text()
    table = text[text.index(MODELS_BEGIN) + len(MODELS_BEGIN):text.index(MODELS_END)].strip()
    assert table == models_table(), "README's model table is stale: run `againzoo zoo table --update README.md`"
