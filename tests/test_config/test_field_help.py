"""`python -m ahn_jax.train --help` lists every config field with its default and meaning."""

import re
from pathlib import Path

from ahn_jax.config import field_help, load_config_file

CONFIGS = Path(__file__).parents[2] / "configs"


def test_every_field_a_config_file_has_is_listed_with_a_meaning():
    """The help's entries are the fields of a config file's sections (plus model.rope_scaling,
    which a file sets only for YaRN), each with the comment written beside it in the source."""
    config = load_config_file(CONFIGS / "qwen3b_gdn.py")
    in_file = {f"{s}.{k}" for s in ("model", "ahn", "train", "data") for k in config[s]}
    text = field_help.describe()
    listed = re.findall(r"^  (\w+\.\w+) = ", text, flags=re.M)
    assert len(listed) == len(set(listed))
    assert set(listed) == in_file | {"model.rope_scaling"}
    for entry in re.split(r"^  (?=\w+\.\w+ = )", text, flags=re.M)[1:]:
        head, first, *_ = entry.splitlines()
        assert first.startswith(" " * 6) and first.strip(), head


def test_meanings_come_from_the_comments_and_constants_show_their_values():
    text = field_help.describe()
    assert "  train.steps = 740\n      optimizer steps of the whole run\n" in text
    # a comment above the field, over two lines, and a constant's value
    assert "  train.allow_random_base = False\n      distilling from a random base" in text
    assert "one of LOSSES ('kl', 'ce', 'distill')" in text
    assert "REFERENCE_MAX_GRAD_NORM 0.25" in text
    assert "  ahn.type = None\n      one of AHN_TYPES ('gdn', 'dn', 'mamba2')" in text
    assert "  model.vocab_size = required\n" in text
