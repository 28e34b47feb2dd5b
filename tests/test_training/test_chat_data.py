"""Chat samples as the reference's SFT data: per-turn truncation (`infer_seqlen`), labels on each
reply with its `<|im_end|>\\n`, the default system prompt, conversation shapes, filter_len."""

import json

import numpy as np
import pytest

from ahn_jax.config import DataConfig
from ahn_jax.tokenizer import QWEN_DEFAULT_SYSTEM, ByteTokenizer, HFTokenizer, render_chat
from ahn_jax.training import chat_data, data
from ahn_jax.training.losses import IGNORE

END = "<|im_end|>\n"  # closes every turn; labelled after a reply
TWO_TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye!"},
]


@pytest.mark.parametrize(
    "source, target, cutoff, expected",
    [
        (100, 200, 1024, (100, 200)),  # fits: nothing cut
        (3000, 500, 1024, (524, 500)),  # reply under half the budget: whole, prompt gets 1024 - 500
        # reply over half, prompt too: shared in proportion, int(1024 * 800 / 3800) = 215 reply
        (3000, 800, 1024, (809, 215)),
        (600, 512, 1024, (553, 471)),  # exactly half is not under half: int(1024 * 512 / 1112)
        (100, 2000, 1024, (100, 924)),  # prompt under half: whole, reply gets 1024 - 100
        (10, 10, 0, (0, 0)),  # no budget left
    ],
)
def test_infer_seqlen_worked_numbers(source, target, cutoff, expected):
    assert chat_data.infer_seqlen(source, target, cutoff) == expected


def _turns(*lengths):
    """(prompt, reply) id lists of the given lengths; prompt ids < 10_000 <= reply ids."""
    return [(list(range(s)), list(range(10_000, 10_000 + t))) for s, t in lengths]


def _runs(labels):
    """The labels as (is labelled, run length) runs."""
    flags = labels != IGNORE
    edges = np.flatnonzero(np.diff(flags.astype(int))) + 1
    bounds = [0, *edges, len(flags)]
    return [(bool(flags[a]), b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def test_the_budget_shrinks_turn_by_turn_and_spent_turns_are_dropped():
    # turn 1 fits (400 of 1024); turn 2 has 624 left: its 300-token reply is under half, so it is
    # whole and its prompt gets 324 of 400; turn 3 comes after the budget is spent: dropped
    ids, labels = chat_data.truncate_turns(_turns((300, 100), (400, 300), (50, 50)), 1024)
    assert len(ids) == 1024
    assert _runs(labels) == [(False, 300), (True, 100), (False, 324), (True, 300)]
    np.testing.assert_array_equal(ids[400:724], np.arange(324))  # the prompt's start is kept
    # turn 2 has 424 left and both halves are over it: int(424 * 400 / 1000) = 169 reply tokens
    ids, labels = chat_data.truncate_turns(_turns((500, 100), (600, 400)), 1024)
    assert _runs(labels) == [(False, 500), (True, 100), (False, 255), (True, 169)]


def test_truncation_keeps_min_of_length_and_cutoff():
    rng = np.random.default_rng(0)
    for _ in range(300):
        lengths = [tuple(pair) for pair in rng.integers(1, 400, size=(rng.integers(1, 5), 2))]
        cutoff = int(rng.integers(1, 1500))
        ids, labels = chat_data.truncate_turns(_turns(*lengths), cutoff)
        assert len(ids) == len(labels) == min(sum(map(sum, lengths)), cutoff)


def _long_chat(prompt_len, reply_len, system="s"):
    """A one-turn byte-level chat whose prompt and reply pieces are these many bytes."""
    header = render_chat([{"role": "system", "content": system}, {"role": "user", "content": ""}],
                         add_generation_prompt=True)  # fmt: skip
    user = "u" * (prompt_len - len(header))
    reply = "r" * (reply_len - len(END))
    return [{"role": "system", "content": system}, {"role": "user", "content": user},
            {"role": "assistant", "content": reply}]  # fmt: skip


def test_a_long_chat_keeps_its_reply_and_loses_the_end_of_its_prompt():
    messages = _long_chat(3000, 500)
    ids, labels = chat_data.encode_chat(ByteTokenizer(), messages, cutoff_len=1024)
    rendered = render_chat(messages).encode()
    assert len(ids) == 1024 and _runs(labels) == [(False, 524), (True, 500)]
    assert bytes(ids[:524].astype(np.uint8)) == rendered[:524]  # from the system turn on
    assert bytes(labels[524:].astype(np.uint8)).decode() == messages[2]["content"] + END
    # a reply over half the budget with a long prompt: 215 of its 800 bytes, its start
    ids, labels = chat_data.encode_chat(ByteTokenizer(), _long_chat(3000, 800), cutoff_len=1024)
    assert _runs(labels) == [(False, 809), (True, 215)]
    assert bytes(labels[809:].astype(np.uint8)) == b"r" * 215


@pytest.fixture(scope="module")
def qwen(qwen25_tokenizer_dir):
    return HFTokenizer.from_dir(qwen25_tokenizer_dir)


def test_labels_are_each_reply_with_im_end_and_newline(qwen):
    messages = TWO_TURNS
    ids, labels = chat_data.encode_chat(qwen, messages)
    im_end, newline = qwen.token_id("<|im_end|>"), qwen.encode("\n")
    assert newline == [198]
    ends = np.flatnonzero(ids == im_end)  # system, user, reply, user, reply
    assert len(ends) == 5 and all(ids[ends + 1] == 198)
    assert [bool(labels[e] != IGNORE and labels[e + 1] == 198) for e in ends] == [
        False, False, True, False, True]  # fmt: skip
    assert qwen.decode(ids[labels != IGNORE]) == "Hello." + END + "Bye!" + END
    # the prompt tokens (system, user, the assistant header) are all IGNORE
    assert qwen.decode(ids[labels == IGNORE]).count("<|im_start|>") == 5


def test_turns_are_tokenized_as_the_reference_template_tokenizes_its_elements(qwen):
    """The reference encodes the system turn, each user turn with the assistant header after it,
    and each reply with its `<|im_end|>\n`, one string at a time; texts with whitespace at their
    edges show any difference."""
    system, users, replies = " sys\n", ["\n  question one \n", "two\n\n"], ["\n\nreply ", " r2"]
    messages = [{"role": "system", "content": system}]
    for user, reply in zip(users, replies, strict=True):
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    turns = chat_data.chat_turns(qwen, messages)
    header = "<|im_start|>assistant\n"
    expected = [(qwen.encode(f"<|im_start|>system\n{system}{END}")
                 + qwen.encode(f"<|im_start|>user\n{users[0]}{END}{header}"),
                 qwen.encode(replies[0] + END)),
                (qwen.encode(f"<|im_start|>user\n{users[1]}{END}{header}"),
                 qwen.encode(replies[1] + END))]  # fmt: skip
    assert turns == expected


def test_byte_labels_are_each_reply_with_im_end_and_newline():
    messages = TWO_TURNS
    ids, labels = chat_data.encode_chat(ByteTokenizer(), messages)
    assert bytes(ids.astype(np.uint8)).decode() == render_chat(messages)
    assert bytes(ids[labels != IGNORE].astype(np.uint8)).decode() == "Hello." + END + "Bye!" + END
    np.testing.assert_array_equal(labels[labels != IGNORE], ids[labels != IGNORE])


def test_a_long_real_chat_keeps_its_reply(qwen):
    reply = "The answer is forty-two."
    messages = [{"role": "user", "content": "a long document. " * 2000 + "What is it?"},
                {"role": "assistant", "content": reply}]  # fmt: skip
    ids, labels = chat_data.encode_chat(qwen, messages, cutoff_len=512)
    assert len(ids) == 512 and qwen.decode(ids[labels != IGNORE]) == reply + END
    assert (labels[-len(qwen.encode(reply + END)) :] != IGNORE).all()


def test_the_default_system_prompt_is_inserted_when_a_sample_has_none(qwen):
    default = f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi"
    for system in ([], [{"role": "system", "content": ""}]):
        record = {"messages": [*system, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello."}]}  # fmt: skip
        ids, _ = chat_data.encode_chat(qwen, chat_data.chat_messages(record))
        assert qwen.decode(ids).startswith(default)
    record["messages"][0]["content"] = "Be brief."
    ids, _ = chat_data.encode_chat(qwen, chat_data.chat_messages(record))
    assert qwen.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_a_top_level_system_is_read_only_where_named_as_llama_factorys_mapped_column(qwen):
    # LLaMA-Factory's sharegpt form: "system" beside "conversations", read when its
    # dataset_info.json maps the column (the reference's ChatQA2 entry maps none)
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]
    record = {"system": "Be brief.", "conversations": turns, "tools": '[{"name": "f"}]'}
    default = f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n"
    ids, _ = chat_data.encode_chat(qwen, chat_data.chat_messages(record))
    assert qwen.decode(ids).startswith(default)
    ids, _ = chat_data.encode_chat(qwen, chat_data.chat_messages(record, "system"))
    assert qwen.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    # a system turn, even empty (then the default), wins over the column, as in the reference
    for content, shown in (("Be terse.", "Be terse."), ("", QWEN_DEFAULT_SYSTEM),
                           (None, QWEN_DEFAULT_SYSTEM)):  # fmt: skip
        record["conversations"] = [{"from": "system", "value": content}, *turns]
        ids, _ = chat_data.encode_chat(qwen, chat_data.chat_messages(record, "system"))
        assert qwen.decode(ids).startswith(f"<|im_start|>system\n{shown}<|im_end|>\n")
    # both forms take both spellings of the roles
    messages = {"messages": [{"role": "human", "content": "Hi"}, {"role": "gpt", "content": "x"}]}
    assert [m["role"] for m in chat_data.chat_messages(messages)] == ["user", "assistant"]


def test_tool_turns_and_roles_of_other_types_are_bad_records():
    turns = [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "{}"},
             {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "Done."}]  # fmt: skip
    with pytest.raises(chat_data.BadRecordError, match="turn 1 is a tool turn .*not supported"):
        chat_data.chat_messages({"conversations": turns})
    for role in (["user"], {"name": "user"}, None):  # a TypeError (unhashable) crashed training
        record = {"messages": [{"role": role, "content": "Hi"}]}
        with pytest.raises(chat_data.BadRecordError, match="turn 0 has an unknown role"):
            chat_data.chat_messages(record)


@pytest.mark.parametrize(
    "roles, why",
    [
        (("assistant", "user"), "turn 0 is 'assistant' where 'user' must be"),
        (("user", "user", "assistant"), "turn 1 is 'user' where 'assistant' must be"),
        (("user", "assistant", "user"), "must end with an assistant reply"),
        (("system", "user", "system", "assistant"), "turn 2 is 'system'"),
        (("system",), "must end with an assistant reply"),
    ],
)
def test_conversations_that_the_reference_drops_are_bad_records(roles, why):
    record = {"messages": [{"role": role, "content": "x"} for role in roles]}
    with pytest.raises(chat_data.BadRecordError, match=why):
        chat_data.chat_messages(record)


def _lengths_read(tmp_path, records, **config):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in records))
    dataset = data.make_dataset(DataConfig(paths=(str(path),), **config), ByteTokenizer(),
                                batch_size=1, seed=0, buckets=(4096,))  # fmt: skip
    iterator = iter(dataset)
    return sorted({int(next(iterator)["lengths"][0]) for _ in range(12)})


def test_filter_len_drops_samples_at_or_below_it_by_their_whole_length(tmp_path):
    records = [_long_chat(300, 100), _long_chat(301, 100)]  # 400 and 401 bytes
    assert _lengths_read(tmp_path, records, filter_len=400, cutoff_len=1024) == [401]
    assert _lengths_read(tmp_path, records, filter_len=399, cutoff_len=1024) == [400, 401]
    # compared before truncation; with filter_len < cutoff_len the same as after it
    assert _lengths_read(tmp_path, records, filter_len=400, cutoff_len=401) == [401]
    assert _lengths_read(tmp_path, records, filter_len=399, cutoff_len=400) == [400]
