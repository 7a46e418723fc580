"""Tiny random Hugging Face text encoders with offline tokenizers, for fast tests.

Each helper writes a model directory that `AutoModel.from_pretrained` and
`AutoTokenizer.from_pretrained` read without network, and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    GPT2Config,
    GPT2Model,
    GPT2TokenizerFast,
)

WORDS = (
    "a an the and of in on with is are this that photo picture image of cat dog bird car tree "
    "red green blue small big white black house street sky water person people"
).split()


def make_tiny_bert(path: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> str:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer over a small English vocab."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    vocab = specials + sorted(set(WORDS)) + letters + [f"##{c}" for c in letters]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(path / "vocab.txt"), model_max_length=128)
    tokenizer.save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    return str(path)


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, so any text encodes without unknowns."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def make_tiny_gpt2(path: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> str:
    """A 2-layer GPT-2 (hidden 32) with a byte-level BPE tokenizer and no pad token."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokens = _byte_alphabet()
    merges = []
    for word in sorted(set(WORDS)):
        piece = "Ġ" + word[0]
        if piece not in tokens:
            merges.append(("Ġ", word[0]))
            tokens.append(piece)
        for ch in word[1:]:
            if piece + ch not in tokens:
                merges.append((piece, ch))
                tokens.append(piece + ch)
            piece += ch
    tokens.append("<|endoftext|>")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges, model_max_length=128)
    tokenizer.save_pretrained(path)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_embd=hidden,
        n_layer=layers,
        n_head=2,
        n_positions=128,
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    GPT2Model(config).save_pretrained(path)
    return str(path)


def make_tiny_captioner(path: str | Path, image_size: int = 32, seed: int = 0) -> str:
    """A tiny random BLIP captioner (model + processor, 1 layer, hidden 32) that loads offline.

    Its captions are random words from a small vocabulary.
    """
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words = "a an the photo picture of cat dog bird car tree red green blue small big".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *words]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(
        vocab=str(path / "vocab.txt"), model_max_length=64, bos_token="[DEC]"
    )
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    text = dict(
        tiny,
        vocab_size=len(vocab),
        num_attention_heads=2,
        encoder_hidden_size=32,
        max_position_embeddings=64,
        bos_token_id=vocab.index("[DEC]"),
        pad_token_id=0,
        sep_token_id=3,
        eos_token_id=3,
    )
    vision = dict(tiny, num_attention_heads=2, image_size=image_size, patch_size=8)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).save_pretrained(path)
    return str(path)


def make_tiny_causal_lm(path: str | Path, seed: int = 0) -> str:
    """make_tiny_gpt2 with its language-model head (`AutoModelForCausalLM` loads it)."""
    from transformers import GPT2LMHeadModel

    make_tiny_gpt2(path, seed=seed)
    config = GPT2Config.from_pretrained(path)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(path)
    return str(path)


def _tiny_vision(image_size: int) -> dict:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": image_size, "patch_size": 8}  # fmt: skip


def _image_processor(cls_name: str, image_size: int, crop: bool):
    import transformers

    cls = getattr(transformers, cls_name)
    if crop:  # CLIP's way: shorter side to size, then a centre crop
        return cls(size={"shortest_edge": image_size}, crop_size=image_size)
    return cls(size={"height": image_size, "width": image_size})


def _bert_text_tower(path: Path, max_positions: int) -> dict:
    """make_tiny_bert's tokenizer in `path` (its model removed) and a text-tower config for it."""
    make_tiny_bert(path)
    (path / "model.safetensors").unlink()
    (path / "config.json").unlink()
    vocab = len((path / "vocab.txt").read_text().split())
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "vocab_size": vocab, "max_position_embeddings": max_positions,
            "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}  # fmt: skip


def make_tiny_clip(path: str | Path, image_size: int = 32, seed: int = 0) -> str:
    """A 2-layer CLIP (hidden 32) with a CLIP image processor and make_tiny_bert's tokenizer.

    The text tower pools at the [SEP] token that tokenizer ends every text with.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    path = Path(path)
    text = _bert_text_tower(path, max_positions=64)
    config = CLIPConfig(text_config=text, vision_config=_tiny_vision(image_size), projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    # Saved as a whole processor: transformers 5 writes processor_config.json (no
    # preprocessor_config.json); the other helpers save the image processor alone.
    image_processor = _image_processor("CLIPImageProcessor", image_size, crop=True)
    tokenizer = BertTokenizerFast.from_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return str(path)


def make_tiny_siglip(path: str | Path, image_size: int = 32, seed: int = 0) -> str:
    """A 2-layer SigLIP (hidden 32), squash-resizing processor, make_tiny_bert's tokenizer."""
    from transformers import SiglipConfig, SiglipModel

    path = Path(path)
    text = _bert_text_tower(path, max_positions=16)
    config = SiglipConfig(text_config=text, vision_config=_tiny_vision(image_size))
    torch.manual_seed(seed)
    SiglipModel(config).save_pretrained(path)
    _image_processor("SiglipImageProcessor", image_size, crop=False).save_pretrained(path)
    return str(path)


def make_tiny_vit(path: str | Path, labels: list[str], image_size: int = 32, seed: int = 0) -> str:
    """A 2-layer ViT image classifier (hidden 32) with `labels` as id2label, and its processor."""
    from transformers import ViTConfig, ViTForImageClassification

    path = Path(path)
    vision = _tiny_vision(image_size)
    config = ViTConfig(**vision, id2label=dict(enumerate(labels)),
                       label2id={name: i for i, name in enumerate(labels)})  # fmt: skip
    torch.manual_seed(seed)
    ViTForImageClassification(config).save_pretrained(path)
    _image_processor("ViTImageProcessor", image_size, crop=False).save_pretrained(path)
    return str(path)
