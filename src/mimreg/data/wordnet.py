"""Class names for WordNet-id classes (ImageNet, Tiny ImageNet), read from the mapping file the
release ships: lines of "<wnid> <names, comma-separated>" (tab or space after the wnid)."""

from __future__ import annotations

from pathlib import Path


def wnid_names(mapping: Path | None, wnids: list[str]) -> list[str]:
    """Each class's name for legends: the first name the mapping gives its wnid ("goldfish" for
    "goldfish, Carassius auratus"), the wnid where there is no mapping file or it lacks the wnid.
    A name two classes share keeps its wnid beside it, so that no two legend entries read the same."""
    words = {}
    if mapping is not None and mapping.is_file():
        for line in mapping.read_text(errors="replace").splitlines():
            wnid, *text = line.split(None, 1)  # a wnid has no space; the names after it may
            words[wnid] = text[0].split(",")[0].strip() if text else ""
    names = [words.get(wnid) or wnid for wnid in wnids]
    shared = {n for n in names if names.count(n) > 1}
    return [f"{n} ({wnid})" if n in shared else n for n, wnid in zip(names, wnids)]
