"""Every kind of --model without Ray: label sets, kind detection, each predictor against the
Hugging Face model run directly, evaluate, and describe-labels (tiny models from configs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from tiny_models import make_tiny_causal_lm, make_tiny_clip, make_tiny_siglip, make_tiny_vit

from raycls.cli import cli
from raycls.config import DEFAULT_TEXT_ENCODER
from raycls.models.hf import candidate_kinds, check_kind
from raycls.models.labels import LabelSet, load_labels, save_labels
from raycls.models.predictor import ModelSpec, load_predictor, model_identity, resolve_model

LABELS = ["cat", "dog", "bird"]
SHAPES = [f"{c}_{s}" for c in ("red", "green", "blue") for s in ("circle", "square", "triangle")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "clip": make_tiny_clip(root / "clip"),
        "siglip": make_tiny_siglip(root / "siglip"),
        "vit": make_tiny_vit(root / "vit", LABELS),
    }


def _images(n: int, size: int = 32) -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


# Label sets


def test_labels_from_names_and_yaml(tmp_path):
    assert load_labels("cat, dog").names == ["cat", "dog"]
    many = [f"class{i}" for i in range(300)]  # longer than a file name may be
    assert load_labels(",".join(many)).names == many
    path = tmp_path / "labels.yaml"
    path.write_text(
        "templates: ['a photo of a {}.', 'a drawing of a {}.']\n"
        "labels:\n  red_circle: [a round red disc]\n  dog:\n"
    )
    labels = load_labels(str(path))
    assert labels.names == ["red_circle", "dog"]
    assert labels.prompts(labels.labels[0]) == [
        "a photo of a red circle.", "a drawing of a red circle.", "a round red disc",
    ]  # fmt: skip
    assert load_labels("a,b").prompts(load_labels("a,b").labels[0]) == ["a"]
    save_labels(labels, str(tmp_path / "again.yaml"))
    assert load_labels(str(tmp_path / "again.yaml")) == labels
    assert labels.sha256() != load_labels("red_circle,dog").sha256()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("labels: [cat, cat]", "more than once"),
        ("templates: ['a photo of a cat']\nlabels: [cat]", "no '{}'"),
        ("labels: {cat: [1, 2]}", "non-empty strings"),
        ("names: [cat]", "'labels' key"),
        ("labels: [cat]\nprompts: []", "unknown key"),
    ],
)
def test_bad_labels_files_say_what_is_wrong(tmp_path, text, words):
    path = tmp_path / "labels.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=words):
        load_labels(str(path))
    with pytest.raises(ValueError, match="empty name"):
        load_labels("cat,,dog")


# Kinds


def test_kinds_come_from_architectures_never_from_names():
    clip = {"model_type": "clip"}
    assert candidate_kinds({**clip, "architectures": ["CLIPModel"]}) == {"zero-shot"}
    assert candidate_kinds({**clip, "architectures": ["CLIPForImageClassification"]}) == {
        "hf-classifier"
    }
    assert candidate_kinds({"model_type": "vit", "architectures": ["ViTModel"]}) == set()
    assert candidate_kinds({"format": "raycls-model", "model_type": "clip"}) == {"raycls"}
    with pytest.raises(ValueError, match="several kinds.*--model-kind"):
        check_kind("m", clip, "auto")
    assert check_kind("m", clip, "zero-shot") == "zero-shot"
    # A CLIP without a trained head must never be run as a classifier (random labels).
    with pytest.raises(ValueError, match="not a hf-classifier model"):
        check_kind("m", {**clip, "architectures": ["CLIPModel"]}, "hf-classifier")
    with pytest.raises(ValueError, match="--model-kind caption"):
        check_kind("m", {"model_type": "bert", "architectures": ["BertModel"]}, "auto")
    custom = {"model_type": "mine", "auto_map": {"AutoModel": "modeling_mine.MyModel"}}
    with pytest.raises(ValueError, match="trust_remote_code"):
        check_kind("m", custom, "zero-shot")
    assert check_kind("m", custom, "zero-shot", trust_remote_code=True) == "zero-shot"


def test_resolve_model_checks_labels_and_paths(tiny):
    assert resolve_model(tiny["clip"], labels="cat,dog").kind == "zero-shot"
    with pytest.raises(ValueError, match="--labels"):
        resolve_model(tiny["clip"])
    with pytest.raises(ValueError, match="drop --labels"):
        resolve_model(tiny["vit"], labels="cat,dog")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model("./no/such/model")
    with pytest.raises(ValueError, match="Hugging Face hub or its cache"):  # offline in tests
        resolve_model("nobody/no-such-model")
    with pytest.raises(ValueError, match="not valid"):
        resolve_model(tiny["vit"], kind="clip")
    spec = resolve_model(tiny["siglip"], labels="cat,dog", raw_scores=True)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    identity = model_identity(spec)
    assert identity["raw_scores"] and identity["labels_sha256"] == spec.labels.sha256()


# Each predictor against the model run directly (32 px images: resizing changes nothing)


def test_zero_shot_scores_equal_the_models_own(tiny):
    from transformers import AutoModel, AutoTokenizer

    for name, padding in (("clip", True), ("siglip", "max_length")):
        predictor = load_predictor(resolve_model(tiny[name], labels=",".join(LABELS)))
        images = _images(4)
        scores, errors = predictor.predict_images(images)
        assert errors == [None] * 4 and scores.shape == (4, 3)
        model, tokenizer = (
            AutoModel.from_pretrained(tiny[name]),
            AutoTokenizer.from_pretrained(tiny[name]),
        )
        tokens = tokenizer(LABELS, padding=padding, truncation=True, max_length=16,
                           return_tensors="pt")  # fmt: skip
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (predictor.image.mean,
                                                                predictor.image.std))  # fmt: skip
        rgb = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)
        with torch.no_grad():
            out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                        pixel_values=(rgb / 255.0 - mean) / std)  # fmt: skip
        expected = out.logits_per_image.softmax(-1).numpy()
        np.testing.assert_allclose(scores, expected, atol=1e-4, err_msg=name)


def test_raw_scores_are_cosine_similarities(tiny):
    predictor = load_predictor(resolve_model(tiny["clip"], labels="cat,dog", raw_scores=True))
    scores, _ = predictor.predict_images(_images(3))
    assert np.all(np.abs(scores) <= 1.0) and not np.allclose(scores.sum(1), 1.0)


def test_hf_classifier_uses_id2label_and_the_models_logits(tiny):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    predictor = load_predictor(resolve_model(tiny["vit"]))
    assert predictor.labels == LABELS
    images = _images(3)
    scores, _ = predictor.predict_images(images)
    model = AutoModelForImageClassification.from_pretrained(tiny["vit"])
    inputs = AutoImageProcessor.from_pretrained(tiny["vit"])(images, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits.softmax(-1).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_caption_zero_shot_with_the_bundled_minilm():
    spec = resolve_model(DEFAULT_TEXT_ENCODER, kind="caption", labels=",".join(SHAPES))
    predictor = load_predictor(spec)
    pixels = np.zeros((3, 3, spec.image.size, spec.image.size), np.float32)
    scores, errors = predictor(pixels, ["a photo of a blue square", None, "green triangle"])
    assert [SHAPES[i] for i in np.nanargmax(scores[[0, 2]], 1)] == ["blue_square", "green_triangle"]
    assert errors[0] is None and "no text" in errors[1] and np.isnan(scores[1]).all()


# evaluate and describe-labels


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from raycls.demo.datasets import make_dataset

    root = tmp_path_factory.mktemp("shapes")
    make_dataset("shapes", root, per_class=1, size=32)
    return root / "test"


def test_evaluate_every_kind(tmp_path, shapes, tiny):
    from raycls.train.evaluation import evaluate

    vit = make_tiny_vit(tmp_path / "vit9", SHAPES)
    runs = {"zero-shot": (tiny["clip"], {}), "hf-classifier": (vit, {}),
            "caption": (DEFAULT_TEXT_ENCODER, {"model_kind": "caption"})}  # fmt: skip
    for kind, (model, kw) in runs.items():
        metrics = evaluate(model, str(shapes), str(tmp_path / kind), batch_size=32, **kw)
        assert metrics["model_kind"] == kind and sorted(metrics["classes"]) == sorted(SHAPES)
        assert metrics["count"] + metrics["bad_count"] == 90, kind
        assert (tmp_path / kind / "metrics.json").is_file()
    # Caption zero-shot skips (and reports) rows without alt-text; the alt-text helps.
    assert metrics["bad_count"] > 0 and "no text" in metrics["bad_examples"][0]
    assert metrics["accuracy"] > 2 / 9
    with pytest.raises(ValueError, match="not among the --labels"):
        evaluate(tiny["clip"], str(shapes), None, labels="red_circle,dog")


def test_evaluate_cli_with_a_labels_file(tmp_path, shapes, tiny):
    save_labels(
        LabelSet.from_dict({"templates": ["a {}"], "labels": SHAPES}), str(tmp_path / "l.yaml")
    )
    args = ["evaluate", tiny["siglip"], str(shapes), "--labels", str(tmp_path / "l.yaml"),
            "--out", str(tmp_path / "r")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["model_kind"] == "zero-shot"


def test_describe_labels_writes_an_editable_labels_file(tmp_path):
    llm = make_tiny_causal_lm(tmp_path / "gpt2")
    out = tmp_path / "labels.yaml"
    args = ["describe-labels", "cat,red_circle", "--llm", llm, "--out", str(out),
            "--per-label", "3", "--max-new-tokens", "6"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(out.read_text())
    assert list(data["labels"]) == ["cat", "red_circle"]
    for name, descriptions in data["labels"].items():
        spoken = name.replace("_", " ")
        assert 1 <= len(descriptions) <= 3 and all(
            d.startswith(f"A {spoken}") for d in descriptions
        )
    assert load_labels(str(out)).names == ["cat", "red_circle"]
    result = CliRunner().invoke(cli, ["describe-labels", "cat", "--llm", str(tmp_path / "none"),
                                      "--out", str(out)])  # fmt: skip
    assert result.exit_code != 0 and "AutoModelForCausalLM" in result.output


def test_describer_uses_a_chat_template_when_the_tokenizer_has_one(tmp_path):
    from transformers import AutoTokenizer

    from raycls.models.describe import Describer

    llm = make_tiny_causal_lm(tmp_path / "chat")
    tokenizer = AutoTokenizer.from_pretrained(llm)
    tokenizer.chat_template = "{% for m in messages %}Q: {{ m['content'] }}\nA:{% endfor %}"
    tokenizer.save_pretrained(llm)
    describer = Describer(llm, max_new_tokens=5)
    assert (
        describer.chat
        and "describe what a red circle looks like" in describer._prompt("red circle")[0]
    )
    torch.manual_seed(0)
    descriptions = describer("red_circle", 2)
    assert 1 <= len(descriptions) <= 2 and all(d and "\n" not in d for d in descriptions)
