"""Label sets for zero-shot classification: names, descriptions and prompt templates.

`--labels cat,dog` or `--labels labels.yaml`. The YAML is what `raycls describe-labels` writes
and what a person edits:

    templates:            # optional; "{}" stands for the label name
      - a photo of a {}.
    labels:
      cat:                # the label as it appears in the output
        - a small furry pet with whiskers and pointed ears
      dog: []             # no descriptions: the name (through the templates) alone

A label's prompts are the templates filled with its name (or the name itself without templates)
plus its descriptions; their text embeddings are averaged (prompt ensembling). In prompts an
underscore in a name reads as a space ("red_circle" -> "red circle").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Label:
    name: str
    descriptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSet:
    """Labels in output order, with the templates every label's name is put through."""

    labels: tuple[Label, ...]
    templates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = self.names
        if not names:
            raise ValueError("the label set is empty; give at least two labels, e.g. cat,dog")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"labels {duplicates} appear more than once; each label once")
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"label {name!r} must be a non-empty string")
        for template in self.templates:
            if "{}" not in template:
                raise ValueError(
                    f"prompt template {template!r} has no '{{}}' for the label name; "
                    "write e.g. 'a photo of a {}.'"
                )

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    def prompts(self, label: Label) -> list[str]:
        """The texts whose embeddings are averaged into `label`'s embedding."""
        spoken = label.name.replace("_", " ")
        base = [t.replace("{}", spoken) for t in self.templates] or [spoken]
        return base + [d.replace("{}", spoken) for d in label.descriptions]

    def to_dict(self) -> dict[str, Any]:
        """The YAML layout (also what crosses into Ray actors)."""
        out: dict[str, Any] = {}
        if self.templates:
            out["templates"] = list(self.templates)
        out["labels"] = {label.name: list(label.descriptions) for label in self.labels}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "labels") -> LabelSet:
        """From the YAML layout; `labels` may also be a plain list of names."""
        if not isinstance(data, dict) or "labels" not in data:
            raise ValueError(
                f"{where} must be a mapping with a 'labels' key (and optional 'templates'), "
                f"got {_short(data)}"
            )
        unknown = set(data) - {"labels", "templates"}
        if unknown:
            raise ValueError(
                f"{where} has unknown key(s) {sorted(unknown)}; valid: labels, templates"
            )
        templates = data.get("templates") or []
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise ValueError(
                f"{where}: 'templates' must be a list of strings, got {_short(templates)}"
            )
        raw = data["labels"]
        if isinstance(raw, list):
            raw = {name: [] for name in raw} if len(set(map(str, raw))) == len(raw) else raw
        if isinstance(raw, list):  # duplicates in a list: let __post_init__ name them
            return cls(tuple(Label(str(n)) for n in raw), tuple(templates))
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: 'labels' must map names to descriptions, got {_short(raw)}")
        labels = []
        for name, descriptions in raw.items():
            descriptions = descriptions or []
            if isinstance(descriptions, str):
                descriptions = [descriptions]
            if not isinstance(descriptions, list) or not all(
                isinstance(d, str) and d.strip() for d in descriptions
            ):
                raise ValueError(
                    f"{where}: the descriptions of label {name!r} must be a list of non-empty "
                    f"strings, got {_short(descriptions)}"
                )
            labels.append(Label(str(name), tuple(d.strip() for d in descriptions)))
        return cls(tuple(labels), tuple(templates))

    def sha256(self) -> str:
        """Identity of the label set: a rerun with other labels or prompts must not resume."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def load_labels(spec: str) -> LabelSet:
    """`cat,dog,bird` or the path (or URI) of a labels YAML file (.yaml or .yml)."""
    if spec.lower().endswith(YAML_SUFFIXES):
        from raycls.io.storage import read_bytes

        data = read_bytes(spec)
        if data is None:
            raise ValueError(f"labels file {spec!r} does not exist")
        try:
            loaded = yaml.safe_load(data)
        except yaml.YAMLError as e:
            raise ValueError(f"labels file {spec!r} is not valid YAML: {e}") from e
        return LabelSet.from_dict(loaded, where=f"labels file {spec!r}")
    names = [n.strip() for n in spec.split(",")]
    if any(not n for n in names):
        raise ValueError(
            f"--labels {spec!r} has an empty name; give comma-separated names (cat,dog) or a "
            "labels .yaml file"
        )
    return LabelSet(tuple(Label(n) for n in names))


def save_labels(labels: LabelSet, path: str) -> None:
    """Write the YAML that `load_labels` reads back (and a person can edit)."""
    from raycls.io.storage import check_output_file, write_bytes

    check_output_file(path, (".yaml", ".yml"))
    text = yaml.safe_dump(labels.to_dict(), sort_keys=False, allow_unicode=True, width=100)
    write_bytes(path, text.encode())


__all__ = ["Label", "LabelSet", "load_labels", "save_labels"]
