"""Data: chat rendering and labels with the real Qwen2.5 tokenizer, bad records, order, shards."""

import json
import logging

import numpy as np
import pytest

from ahn_jax.config import ConfigError, DataConfig
from ahn_jax.tokenizer import ByteTokenizer, HFTokenizer, render_chat
from ahn_jax.training import data

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is a hippocampus?"},
    {"role": "assistant", "content": "A brain region for memory."},
    {"role": "user", "content": "And AHN?"},
    {"role": "assistant", "content": "A compressed memory for transformers."},
]


def test_chat_labels_cover_only_the_assistant(qwen25_tokenizer_dir):
    tokenizer = HFTokenizer.from_dir(qwen25_tokenizer_dir)
    ids, labels = data.encode_chat(tokenizer, CHAT)
    np.testing.assert_array_equal(ids, tokenizer.encode(render_chat(CHAT)))
    learned = tokenizer.decode(ids[labels != data.IGNORE])
    assert learned == (  # each reply with its closing <|im_end|> and the "\n" after it
        "A brain region for memory.<|im_end|>\nA compressed memory for transformers.<|im_end|>\n"
    )
    np.testing.assert_array_equal(labels[labels != data.IGNORE], ids[labels != data.IGNORE])


def test_sharegpt_and_openai_forms_agree():
    sharegpt = {"conversations": [{"from": {"system": "system", "user": "human",
                "assistant": "gpt"}[m["role"]], "value": m["content"]} for m in CHAT]}  # fmt: skip
    assert data.chat_messages(sharegpt) == data.chat_messages({"messages": CHAT}) == CHAT


def _config(paths, fmt="chat", cutoff_len=64):
    return DataConfig(format=fmt, paths=tuple(str(p) for p in paths), filter_len=10,
                      cutoff_len=cutoff_len)  # fmt: skip


CHAT_LEN = 256  # byte-level chats: the default system prompt alone is ~100 bytes


def _write_chat(path, n, bad_lines=()):
    lines = []
    for i in range(n):
        reply = f"reply number {i} " * (1 + i % 3)
        messages = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": reply}]
        lines.append(json.dumps({"messages": messages}))
    for number, text in bad_lines:
        lines.insert(number - 1, text)
    path.write_text("\n".join(lines) + "\n")


def test_bad_records_are_skipped_counted_and_located(tmp_path, caplog):
    path = tmp_path / "chat.jsonl"
    bad = [(2, "{not json"), (4, json.dumps({"messages": [{"role": "user"}]})),
           (6, json.dumps({"text": "no conversation"}))]  # fmt: skip
    _write_chat(path, 12, bad)
    skips = data.SkipCounter()
    dataset = data.make_dataset(_config([path], cutoff_len=CHAT_LEN), ByteTokenizer(),
                                batch_size=3, seed=0, buckets=(CHAT_LEN,), skips=skips)  # fmt: skip
    iterator = iter(dataset)
    with caplog.at_level(logging.WARNING):
        batches = [next(iterator) for _ in range(8)]  # two passes over the 12 good records
    # each bad record counted and logged once, though the two passes read it twice
    assert skips.count == 3
    for line in (2, 4, 6):
        assert caplog.text.count(f"skipping bad record {path}:{line}:") == 1
    assert all(b["input_ids"].shape == (3, CHAT_LEN) for b in batches)
    assert all(int(b["lengths"].max()) < CHAT_LEN for b in batches)  # nothing cut: rows differ


def test_a_line_that_is_not_utf8_is_a_bad_record_not_replacement_characters(tmp_path, caplog):
    path = tmp_path / "chat.jsonl"
    _write_chat(path, 6)
    latin1 = {"messages": [{"role": "user", "content": "caf\u00e9"},
                           {"role": "assistant", "content": "ol\u00e9"}]}  # fmt: skip
    path.write_bytes(path.read_bytes() + json.dumps(latin1, ensure_ascii=False).encode("latin-1"))
    skips = data.SkipCounter()
    dataset = data.make_dataset(_config([path], cutoff_len=CHAT_LEN), ByteTokenizer(),
                                batch_size=1, seed=0, buckets=(CHAT_LEN,), skips=skips)  # fmt: skip
    iterator = iter(dataset)
    with caplog.at_level(logging.WARNING):
        rows = [next(iterator)["input_ids"][0] for _ in range(6)]
    assert skips.count == 1 and f"{path}:7: invalid JSON (not UTF-8: byte 0xe9" in caplog.text
    assert not any(b"\xef\xbf\xbd" in bytes(row.astype(np.uint8)) for row in rows)  # no U+FFFD


def test_files_in_shapes_the_reader_does_not_take_are_named_at_start(tmp_path):
    array = tmp_path / "lf.json"
    array.write_text(json.dumps([{"conversations": [{"from": "human", "value": "q"}]}]))
    with pytest.raises(ConfigError, match=f"{array} is a JSON array; the data files are JSON L"):
        data.make_dataset(_config([array]), ByteTokenizer(), batch_size=1, seed=0, buckets=(64,))
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text("\n" + json.dumps({"instruction": "Add.", "input": "1+1", "output": "2"}))
    with pytest.raises(ConfigError, match=f"{alpaca} holds alpaca records"):
        data.make_dataset(_config([alpaca]), ByteTokenizer(), batch_size=1, seed=0, buckets=(64,))
    # as text records they are only records without "text": skipped, counted, like any bad one
    with pytest.raises(ConfigError, match="no usable record"):
        next(iter(data.make_dataset(_config([alpaca], fmt="text"), ByteTokenizer(),
                                    batch_size=1, seed=0, buckets=(64,))))  # fmt: skip


def test_filter_and_cutoff(tmp_path):
    path = tmp_path / "text.jsonl"
    texts = ["short", "x" * 30, "y" * 200]
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    dataset = data.make_dataset(_config([path], fmt="text"), ByteTokenizer(), batch_size=1,
                                seed=0, buckets=(64,))  # fmt: skip
    iterator = iter(dataset)
    lengths = sorted({int(next(iterator)["lengths"][0]) for _ in range(10)})
    assert lengths == [30, 64]  # "short" (5 <= filter_len 10) dropped, 200 cut at 64


def test_a_stream_where_no_record_survives_is_an_error_not_a_hang(tmp_path):
    """Every record bad or too short: reading stops after two passes' worth of skipped records
    (it span forever, and a step that never ends cannot be stopped by SIGTERM)."""
    path = tmp_path / "text.jsonl"
    path.write_text(json.dumps({"text": "short"}) + "\n{not json\n")
    dataset = data.make_dataset(_config([path], fmt="text"), ByteTokenizer(), batch_size=1,
                                seed=0, buckets=(64,))  # fmt: skip
    with pytest.raises(ConfigError, match=r"data: no usable record in 4 read in a row"):
        next(iter(dataset))
    whole = tmp_path / "short.txt"  # whole documents are checked when they are tokenized
    whole.write_text("short")
    with pytest.raises(ConfigError, match="no document is longer than data.filter_len = 10"):
        data.make_dataset(_config([whole], fmt="text"), ByteTokenizer(), batch_size=1, seed=0,
                          buckets=(64,))  # fmt: skip


def test_order_is_seeded_and_the_iterator_state_resumes_exactly(tmp_path):
    path = tmp_path / "chat.jsonl"
    _write_chat(path, 20)

    def make(seed=0, **kwargs):
        return iter(
            data.make_dataset(
                _config([path], cutoff_len=CHAT_LEN),
                ByteTokenizer(),
                batch_size=2,
                seed=seed,
                buckets=(CHAT_LEN,),
                **kwargs,
            )
        )

    first = make()
    for _ in range(3):
        next(first)
    state = first.get_state()
    expected = [next(first)["input_ids"] for _ in range(4)]
    resumed = make()
    resumed.set_state(json.loads(json.dumps(state)))
    for batch in expected:
        np.testing.assert_array_equal(next(resumed)["input_ids"], batch)
    other = make(seed=1)
    assert any(not np.array_equal(next(other)["input_ids"], b) for b in [next(make())["input_ids"]])


def test_reading_ahead_in_threads_gives_the_same_stream_and_resumes_it(tmp_path):
    """data.read_threads: records read and tokenized in grain's threads ahead of the loop; the
    batches, and the state a checkpoint saves (the batches consumed, not those read ahead), are
    the in-thread reader's, so either resumes the other."""
    path = tmp_path / "chat.jsonl"
    _write_chat(path, 20)

    def make(threads):
        config = DataConfig(format="chat", paths=(str(path),), filter_len=10,
                            cutoff_len=CHAT_LEN, read_threads=threads)  # fmt: skip
        return iter(data.make_dataset(config, ByteTokenizer(), batch_size=2, seed=0,
                                      buckets=(CHAT_LEN,)))  # fmt: skip

    inline, ahead = make(0), make(3)
    for _ in range(15):  # one and a half passes
        np.testing.assert_array_equal(next(inline)["input_ids"], next(ahead)["input_ids"])
    state = ahead.get_state()
    assert state == inline.get_state()
    expected = [next(ahead)["input_ids"] for _ in range(4)]
    for threads in (0, 3):
        resumed = make(threads)
        resumed.set_state(json.loads(json.dumps(state)))
        for batch in expected:
            np.testing.assert_array_equal(next(resumed)["input_ids"], batch)
    with pytest.raises(ConfigError, match="data.read_threads must be >= 0"):
        DataConfig(read_threads=-1)
    with pytest.raises(ConfigError, match="data.system_field is read by data.format 'chat' only"):
        DataConfig(format="text", system_field="system")


def test_the_stream_says_which_pass_over_the_records_it_reads(tmp_path):
    """10 records, batches of 2 (one record too short, dropped): the first 4 batches read pass 1,
    the 5th reaches into pass 2, whose records are the same ones again."""
    path = tmp_path / "text.jsonl"
    texts = [f"document number {i} " * 3 for i in range(9)] + ["short"]
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    passes = data.DataPasses()
    iterator = iter(data.make_dataset(_config([path], fmt="text"), ByteTokenizer(), batch_size=2,
                                      seed=0, buckets=(64,), passes=passes))  # fmt: skip
    seen = []
    for _ in range(4):
        batch = next(iterator)
        seen += [
            bytes(row[:n]) for row, n in zip(batch["input_ids"], batch["lengths"], strict=True)
        ]
        assert passes.current == 1
    batch = next(iterator)  # the 9th sample of pass 1, then the first of pass 2
    assert passes.current == 2
    again = bytes(batch["input_ids"][1][: batch["lengths"][1]])
    assert len(set(seen)) == 8 and again in seen


def test_processes_read_disjoint_shards_that_together_make_the_single_process_batches(tmp_path):
    path = tmp_path / "text.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"document {i:03d} " * 3}) for i in range(16)))

    def batches(batch_size, index, count):
        dataset = data.make_dataset(_config([path], fmt="text"), ByteTokenizer(),
                                    batch_size=batch_size, seed=0, buckets=(64,),
                                    process_index=index, process_count=count)  # fmt: skip
        it = iter(dataset)
        return [{bytes(row[:12]) for row in next(it)["input_ids"]} for _ in range(8)]

    shards = [batches(2, index, 2) for index in range(2)]
    seen = [set().union(*shard[:4]) for shard in shards]  # the first epoch: 4 steps of 4 rows
    assert len(seen[0]) == len(seen[1]) == 8 and not seen[0] & seen[1]
    single = batches(4, 0, 1)
    for step in range(8):  # the global batch of each step is the single process's batch
        assert shards[0][step] | shards[1][step] == single[step], step


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        data.make_dataset(_config([tmp_path / "nowhere.jsonl"]), ByteTokenizer(), batch_size=1,
                          seed=0, buckets=(64,))  # fmt: skip


def test_recall_pairs_go_into_every_full_window_and_change_with_the_epoch(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("Now is the winter of our discontent made glorious summer. " * 12)  # 3 x 256
    config = _config([path], fmt="text")
    recall = {"span": 8, "pairs": 1, "min_gap": 40, "max_gap": 100}
    config = config.replace(cutoff_len=256, recall=recall, tokenizer="bytes")
    iterator = iter(data.make_dataset(config, ByteTokenizer(), batch_size=3, seed=0,
                                      buckets=(256,)))  # fmt: skip
    epochs = [next(iterator)["input_ids"] for _ in range(2)]
    for batch in epochs:
        for row in batch:
            text = bytes(row.astype(np.uint8))
            key = text.index(b"<k=")
            assert text[key + 3 : key + 11] == text[text.index(b"<r=") + 3 :][:8]
    assert not np.array_equal(np.sort(epochs[0], axis=0), np.sort(epochs[1], axis=0))


def test_copy_warmup_windows_are_filler_with_their_own_pairs_then_text(tmp_path):
    path = tmp_path / "a.txt"
    # exactly 6 windows of 256 (no short last piece: the warm-up counts windows before the
    # filter drops short ones, so with one its first step would end early)
    path.write_text(("Now is the winter of our discontent made glorious summer. " * 27)[:1536])
    recall = {"span": 8, "pairs": 1, "min_gap": 40, "max_gap": 100, "letters": "ABCDEFGHIJ",
              "distinct": True}  # fmt: skip
    warmup = {"steps": 2, "pairs": 3, "min_gap": 40, "max_gap": 60}
    config = _config([path], fmt="text").replace(
        cutoff_len=256, recall=recall, copy_warmup=warmup, tokenizer="bytes"
    )
    iterator = iter(data.make_dataset(config, ByteTokenizer(), batch_size=3, seed=0,
                                      buckets=(256,)))  # fmt: skip
    batches = [next(iterator)["input_ids"] for _ in range(4)]
    for step, batch in enumerate(batches):
        for row in batch:
            text = bytes(row.astype(np.uint8))
            keys = [i for i in range(len(text)) if text.startswith(b"<k=", i)]
            recalls = [i for i in range(len(text)) if text.startswith(b"<r=", i)]
            for key, rec in zip(keys, recalls, strict=True):  # each recall copies its key
                assert text[key + 3 : key + 11] == text[rec + 3 : rec + 11]
            if step < warmup["steps"]:  # filler: lowercase and spaces only, three pairs
                assert len(keys) == 3 and b"winter" not in text
                outside = bytes(b for b in text if b not in b"<>=kr" and not 65 <= b <= 90)
                assert set(outside) <= set(b"abcdefghijklmnopqrstuvwxyz ")
            else:
                assert len(keys) == 1 and b"winter" in text


@pytest.mark.parametrize(
    "warmup, recall, match",
    [
        ({"steps": 5}, {}, "needs data.recall"),
        ({"pairs": 3}, {"span": 8}, "'steps' required"),
        ({"steps": 5, "gaps": 3}, {"span": 8}, "'steps' required"),
        ({"steps": 0}, {"span": 8}, "steps must be an integer >= 1"),
    ],
)
def test_copy_warmup_settings_are_checked(warmup, recall, match):
    from ahn_jax.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        DataConfig(format="shakespeare", recall=recall, copy_warmup=warmup)


def test_data_files_are_compared_by_place_and_count():
    from ahn_jax.training.data_files import changed_files

    assert changed_files(None, ["1 bytes, a"], ["x.jsonl"]) == []  # a checkpoint before them
    assert changed_files(["1 bytes, a"], ["1 bytes, a"], ["y.jsonl"]) == []  # renamed, same file
    changed = changed_files(["1 bytes, a"], ["2 bytes, b"], ["x.jsonl"])
    assert changed == ["x.jsonl (other contents)"]
    assert changed_files(["1 bytes, a"], ["1 bytes, a"] * 2, ["x", "y"]) == [
        "2 files where it read 1"
    ]
    # the {path: fingerprint} a few commits kept, read in its order
    assert changed_files({"x.jsonl": "1 bytes, a"}, ["1 bytes, a"], ["x.jsonl"]) == []
