"""Entries: what ``compare``, ``bench`` and ``probe`` take as ``--entries model:kind[:key=value,...]``,
and the ``key=value`` model options of ``--model-kwargs``."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PnnhError
from .models.registry import check_options, model_info

# Set by every command from its data or flags, never as a model option of an entry or --model-kwargs.
RESERVED = ("num_classes", "in_chans")


def parse_kwargs(items: list[str] | dict, option: str = "--model-kwargs") -> dict:
    """``["learner_ratio=0.5", "coder=learned"]`` -> {"learner_ratio": 0.5, "coder": "learned"}; an item may
    hold several, separated by commas as in ``--entries`` (``"coder=learned,coder_share=block"``). A mapping
    (a --config file's ``model_kwargs:``) is read as its ``key=value`` items; errors name ``option``."""
    if isinstance(items, dict):
        items = [f"{k}={v}" for k, v in items.items()]
    if not (isinstance(items, list) and all(isinstance(item, str) for item in items)):
        raise PnnhError(f"{option}: model options must be key=value words or a mapping of option: value, "
                        f"got {items!r:.100}")
    out: dict = {}
    for item in (piece for words in items for piece in words.split(",") if piece):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PnnhError(f"{option}: model option {item!r} is not key=value")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                pass
        else:
            out[key] = {"true": True, "false": False, "none": None}.get(value.lower(), value)
    return out


@dataclass
class Entry:
    """One model to compare: ``model:kind[:key=value,key=value]``, e.g. ``resnet56:pnnh:learner_ratio=0.5``."""
    model: str
    kind: str
    kwargs: dict = field(default_factory=dict)
    plain_form: bool = False  # bench only: the model rewritten by to_plain (inference only)

    @property
    def variant(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items())) or "default"

    @property
    def label(self) -> str:
        return (f"{self.model}:{self.kind}" + (f":{self.variant}" if self.kwargs else "")
                + (":plain_form" if self.plain_form else ""))

    @property
    def slug(self) -> str:
        return self.label.replace(":", "-").replace(",", "-").replace("=", "")

    @classmethod
    def parse(cls, text: str) -> Entry:
        parts = text.strip().split(":")
        plain_form = parts[-1] == "plain_form"
        if plain_form:
            parts = parts[:-1]
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise PnnhError(f"--entries: {text!r} is not model:kind[:key=value,...][:plain_form], e.g. resnet56:pnnh")
        options = [kv for kv in ":".join(parts[2:]).split(",") if kv]
        kwargs = parse_kwargs(options, "--entries") if options else {}
        check_options(parts[0], parts[1], kwargs, RESERVED)
        if plain_form and parts[1] not in model_info(parts[0])["plain_form"]:
            raise PnnhError(f"--entries: {text!r}: a {parts[1]} model has no plain form; kinds with one: "
                            f"{', '.join(model_info(parts[0])['plain_form'])}")
        return cls(parts[0], parts[1], kwargs, plain_form)


def parse_entries(text: str) -> list[Entry]:
    """``"resnet56:residual,resnet56:pnnh:learner_ratio=0.5,code_ratio=0.5"``: commas separate entries,
    and key=value pieces without a colon belong to the entry before them."""
    pieces, current = [], None
    for token in text.split(","):
        token = token.strip()
        if not token:
            continue
        if "=" in token and ":" not in token and current is not None:
            current += "," + token
        else:
            if current is not None:
                pieces.append(current)
            current = token
    if current is not None:
        pieces.append(current)
    entries = [Entry.parse(p) for p in pieces]
    if not entries:
        raise PnnhError("no entries given: --entries resnet56:residual,resnet56:pnnh")
    return unique(entries)


def unique(entries: list[Entry]) -> list[Entry]:
    """``entries``, refused if one is named twice (it would be trained once and listed twice)."""
    labels = [e.label for e in entries]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise PnnhError(f"entry {', '.join(twice)} is given twice: name each entry once")
    return entries


def entries_from_options(entries: str | None, model: str | None, kinds: str | None,
                         model_kwargs: list[str] | None) -> list[Entry]:
    """The entries of ``compare`` and ``probe``: ``entries`` (``model:kind[:key=value,...]``, comma-separated),
    or else ``model`` in each of ``kinds`` (comma-separated; default residual) with ``model_kwargs``."""
    if entries:
        if model or kinds or model_kwargs:
            raise PnnhError("--entries names each model, kind and option: drop --model, --kind, --kinds and "
                            "--model-kwargs")
        return parse_entries(entries)
    if not model:
        raise PnnhError("--model is needed (or --entries, or --checkpoint of a trained run)")
    names = [k.strip() for k in (kinds or "residual").split(",") if k.strip()]
    options = parse_kwargs(model_kwargs or [])
    for k in names:
        check_options(model, k, options, RESERVED)
    return unique([Entry(model, k, options) for k in names])


def parse_seeds(text: str, first: int = 0) -> list[int]:
    """``--seeds``: a count from ``first`` ("3": first, first+1, first+2) or a list ("0,1,2")."""
    try:
        listed = [int(s) for s in text.split(",") if s.strip()] if "," in text else None
        count = None if listed is not None else int(text)
    except ValueError:
        raise PnnhError(f"--seeds {text!r} is neither a count (3) nor a list (0,1,2)") from None
    if count is not None and not 1 <= count <= MAX_SEEDS:
        raise PnnhError(f"--seeds: a count from 1 to {MAX_SEEDS}, got {count}")
    seeds = listed if listed is not None else list(range(first, first + count))  # type: ignore[operator]
    if not seeds or len(seeds) > MAX_SEEDS or not all(0 <= s < 2**32 for s in seeds):
        raise PnnhError(f"--seeds needs a count (3) or a list (0,1,2) of at most {MAX_SEEDS} seeds from 0 to 2**32 - 1")
    return seeds


MAX_SEEDS = 1000
