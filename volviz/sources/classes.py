"""Class names: read them from a file, print long lists compactly, and match ImageFolder class
folders to a model's classes by NAME rather than by sorted position.

torchvision's ImageFolder numbers class folders by sorted position, which is right only when the
folders are exactly the model's classes in the model's order. Folders ``seven/``, ``three/`` for a
digits model would become classes 0 and 1. Matching is case-insensitive, ignores ``_``/``-``/spaces,
accepts ``NNN name`` prefixes (``007_seven``), WordNet ids (``n02124075``, when the class list
carries them), synset-style alternatives (``tench, Tinca tinca``) and digit words for digit classes.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
from dataclasses import dataclass, field

from volviz.errors import ModelLoadError

log = logging.getLogger("volviz.sources")

_WNID = re.compile(r"^n\d{8}$")
_WNID_PREFIX = re.compile(r"^(n\d{8})(?:[\s_\-:.]+(.*))?$")
_NUM_PREFIX = re.compile(r"^(\d+)[\s_\-:.]+(.+)$")
_DIGIT_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


class ClassNamesError(ModelLoadError):
    """A class-names file cannot be read as a list of names."""


def compact_names(names, limit: int = 8) -> str:
    """``tench, goldfish, ... (1000 names)``: long lists in one short line for logs and errors."""
    names = [str(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} names)"


@dataclass
class ClassTable:
    names: list[str]
    wordnet_ids: list[str] | None = None


def _split_wnid(entry: str) -> tuple[str | None, str]:
    m = _WNID_PREFIX.match(entry.strip())
    if m and m.group(2):
        return m.group(1), m.group(2).strip()
    return None, entry.strip()


def read_class_file(path: str | pathlib.Path) -> ClassTable:
    """Names (and WordNet ids, when every entry has one) from a text file, one name per line
    (``n01440764 tench, Tinca tinca`` lines as in synset_words.txt too), or JSON: a list of names,
    a list of ``[wnid, name]`` pairs, or ``{"0": name | [wnid, name], ...}`` (imagenet_class_index.json)."""
    p = pathlib.Path(path)
    hint = "give a text file with one class name per line, or a JSON list of names"
    if not p.is_file():
        raise ClassNamesError(f"class-names file not found: {p}; {hint}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClassNamesError(f"cannot read class names from {p} ({type(exc).__name__}); {hint}") from None
    entries: list = []
    if p.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClassNamesError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno}); {hint}") from None
        if isinstance(obj, dict):
            try:
                obj = [obj[k] for k in sorted(obj, key=int)]
            except (ValueError, TypeError):
                raise ClassNamesError(f"{p} is a JSON object whose keys are not class indices; {hint}") from None
        if not isinstance(obj, list):
            raise ClassNamesError(f"{p} holds a JSON {type(obj).__name__}, not a list; {hint}")
        for e in obj:
            if isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(v, str) for v in e):
                entries.append((e[0], e[1]))
            elif isinstance(e, str):
                entries.append(_split_wnid(e))
            else:
                raise ClassNamesError(f"{p} has an entry {str(e)[:40]!r} that is not a name; {hint}")
    else:
        lines = [ln.strip() for ln in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        entries = [_split_wnid(ln) for ln in lines]
    if not entries or any(not name for _, name in entries):
        raise ClassNamesError(f"{p} has {'no names' if not entries else 'an empty name'}; {hint}")
    wnids = [w for w, _ in entries]
    return ClassTable([n for _, n in entries], wnids if all(wnids) else None)


def load_class_names(path: str | pathlib.Path) -> list[str]:
    """The class names in a text file (one per line) or a JSON list; see ``read_class_file``."""
    return read_class_file(path).names


def _norm(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", s.strip().lower()).strip()


@dataclass
class ClassMatch:
    index: dict[str, int]  # folder name -> class index (matched folders only)
    unmatched: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)


def _name_keys(names: list[str]) -> dict[str, set[int]]:
    keys: dict[str, set[int]] = {}
    for i, name in enumerate(names):
        alts = {_norm(name)} | {_norm(a) for a in name.split(",") if a.strip()}
        m = _NUM_PREFIX.match(name.strip())
        if m:
            alts.add(_norm(m.group(2)))
        for a in alts:
            keys.setdefault(a, set()).add(i)
    return keys


def match_class_folders(folders: list[str], class_names: list[str], wordnet_ids: list[str] | None = None) -> ClassMatch:
    """Map each folder name to the index of the model class it names; see the module docstring."""
    keys = _name_keys(class_names)
    wn = {w.lower(): i for i, w in enumerate(wordnet_ids or []) if w}
    out = ClassMatch({})
    for folder in folders:
        f = folder.strip()
        hits: set[int] = set()
        prefix_num = None
        wm = _WNID_PREFIX.match(f.lower())
        if wm and wm.group(1) in wn:
            hits = {wn[wm.group(1)]}
        if not hits:
            hits = set(keys.get(_norm(f), ()))
        if not hits:
            m = _NUM_PREFIX.match(f)
            rest = m.group(2) if m else (wm.group(2) if wm and wm.group(2) else None)
            if m:
                prefix_num = int(m.group(1))
            if rest is not None:
                hits = set(keys.get(_norm(rest), ()))
        if not hits and _norm(f) in _DIGIT_WORDS:
            hits = set(keys.get(_DIGIT_WORDS[_norm(f)], ()))
        if not hits and f.isdigit() and int(f) < len(class_names):
            hits = {int(f)}  # folders named by class index
        if len(hits) > 1 and prefix_num in hits:
            hits = {prefix_num}
        if len(hits) == 1:
            out.index[folder] = hits.pop()
        elif hits:
            out.ambiguous.append(folder)
        else:
            out.unmatched.append(folder)
    return out


def folder_labels(
    folders: list[str], class_names: list[str] | None, wordnet_ids: list[str] | None = None, where: str = ""
) -> tuple[dict[str, int], list[str]]:
    """Labels for ImageFolder class folders plus the names those labels index, with ONE warning
    when something is assumed. Unmatched folders are unlabelled (-1): a wrong label is worse than
    none (``--target true`` then uses the prediction)."""
    folders = sorted(folders)
    if not class_names:
        if len(folders) > 1:
            log.warning(
                "the model names no classes, so class folder i (sorted: %s)%s is taken as output i; "
                "pass --class-names FILE (one name per line, or a JSON list) to match folders by name",
                compact_names(folders, 6),
                where,
            )
        return {f: i for i, f in enumerate(folders)}, folders
    looks_wnid = all(_WNID.match(f.lower()) for f in folders)
    if looks_wnid and not wordnet_ids and len(folders) == len(class_names):
        log.warning(
            "the %d class folders%s are WordNet ids and the model's class names carry none: taken in "
            "sorted order as outputs 0..%d (the ImageNet convention); pass --class-names FILE with "
            "'n01440764 tench' lines to match them by id",
            len(folders),
            where,
            len(folders) - 1,
        )
        return {f: i for i, f in enumerate(folders)}, list(class_names)
    m = match_class_folders(folders, class_names, wordnet_ids)
    bad = m.unmatched + m.ambiguous
    if bad:
        why = (
            "they are WordNet ids and the model's class names carry none; pass --class-names FILE with "
            "'n01440764 tench' lines"
            if looks_wnid
            else f"rename them to the model's class names ({compact_names(class_names, 4)}) or pass --class-names FILE"
        )
        amb = f" ({len(m.ambiguous)} name several classes)" if m.ambiguous else ""
        log.warning(
            "%d of %d class folders%s match no class of the model%s and are taken as unlabelled: %s; %s",
            len(bad),
            len(folders),
            where,
            amb,
            compact_names(bad, 6),
            why,
        )
    return m.index, list(class_names)


def find_class(target: str, class_names: list[str] | None) -> int:
    """Index of the class a user names (``--target``): exact, else case/underscore-insensitive or a
    synset alternative; a name of two classes (ImageNet's two 'crane's) is an error, not the first."""
    from volviz.errors import TargetError

    if class_names and target in class_names and class_names.count(target) == 1:
        return class_names.index(target)
    hits = sorted(_name_keys(class_names or []).get(_norm(target), ()))
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise TargetError(
            f"target {target!r} names {len(hits)} classes ({', '.join(map(str, hits))}); pass the class index instead"
        )
    shown = compact_names(class_names, 10) if class_names else "no class names known (pass --class-names FILE)"
    raise TargetError(f"unknown target class {target!r}; valid: true, pred, an index, or one of: {shown}")


def check_class_count(names: list[str], n_outputs: int, source: str = "--class-names") -> None:
    """A class list must have one name per model output."""
    if len(names) != n_outputs:
        raise ClassNamesError(
            f"{source} has {len(names)} names but the model has {n_outputs} outputs; "
            "give one name per output, in output order"
        )
