"""Every convert mode writes its output directory whole or not at all: an interruption leaves no
output and no staging directory, and what a killed run left never blocks the next one."""

import os
import socket
import subprocess

import orbax.checkpoint.experimental.v1 as ocp
import pytest
import torch
from shared import save_tiny_qwen2

from ahn_jax import convert as convert_cli
from ahn_jax import from_pretrained
from ahn_jax.checkpoints import convert, safetensors_io, staging

SMALL_SHARDS = ["--max_shard_gb", "0.00004"]  # ~43 KB: the tiny models' tensors take a few shards


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A base with a side file, its AHN-only weights, their merge and the merge as Orbax."""
    root = tmp_path_factory.mktemp("interrupted")
    save_tiny_qwen2(root / "base", num_hidden_layers=3, dtype=torch.bfloat16)
    (root / "base" / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    model = from_pretrained(root / "base", ahn_type="gdn", ahn_output_init="normal", seed=1)
    model.save_ahn(root / "ahn", window=5, sinks=3)
    argv = ["--merge", "--hf_dir", str(root / "base"), "--ahn_dir", str(root / "ahn")]
    assert convert_cli.main([*argv, "--out", str(root / "merged")]) == 0
    convert.hf_to_orbax(root / "merged", root / "ckpt")
    return root


# mode -> (the arguments writing under `out`, the directories written, the writer call that is
# interrupted: the second shard; --ahn_only writes one file, interrupted before its config.json)
MODES = {
    "to_hf": (lambda d, o: ["--to_hf", "--ckpt", d / "ckpt", "--out", o / "x", *SMALL_SHARDS],
              ["x"], 2),
    "ahn_only": (lambda d, o: ["--ahn_only", "--ckpt", d / "ckpt", "--out", o / "x"], ["x"], 1),
    "merge": (lambda d, o: ["--merge", "--hf_dir", d / "base", "--ahn_dir", d / "ahn", "--out",
                            o / "x", *SMALL_SHARDS], ["x"], 2),
    "split": (lambda d, o: ["--split", "--hf_dir", d / "merged", "--out", o / "x", "--ahn_out",
                            o / "y", *SMALL_SHARDS], ["x", "y"], 2),
}  # fmt: skip


def _run(argv) -> int:
    return convert_cli.main([str(a) for a in argv])


def _files(directory):
    """relative path -> bytes of every file under `directory`."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def _interrupt_writer(monkeypatch, at: int) -> list:
    """`_write_file` raises KeyboardInterrupt on its call `at`, once that file is written (the
    worst moment: a whole file on disk, the rest not)."""
    real, calls = safetensors_io._write_file, []

    def write(path, *args):
        calls.append(path)
        real(path, *args)
        if len(calls) == at:
            raise KeyboardInterrupt

    monkeypatch.setattr(safetensors_io, "_write_file", write)
    return calls


@pytest.mark.parametrize("mode", sorted(MODES))
def test_an_interrupted_write_leaves_nothing_and_a_rerun_writes_the_same(
    dirs, tmp_path, monkeypatch, mode
):
    argv, written, at = MODES[mode]
    assert _run(argv(dirs, tmp_path / "whole")) == 0  # uninterrupted, for comparison
    (tmp_path / "run").mkdir()
    calls = _interrupt_writer(monkeypatch, at)
    with pytest.raises(KeyboardInterrupt):
        _run(argv(dirs, tmp_path / "run"))
    assert len(calls) == at
    assert list((tmp_path / "run").iterdir()) == []  # no output, no staging directory
    monkeypatch.undo()
    assert _run(argv(dirs, tmp_path / "run")) == 0
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == written
    for name in written:
        whole, rerun = _files(tmp_path / "whole" / name), _files(tmp_path / "run" / name)
        assert "config.json" in rerun
        assert rerun == whole


def test_an_interrupted_hf_to_orbax_leaves_nothing(dirs, tmp_path, monkeypatch):
    real, calls = ocp.partial.save, []

    def save(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ocp.partial, "save", save)
    with pytest.raises(KeyboardInterrupt):
        _run(["--hf_dir", dirs / "base", "--out", tmp_path / "ckpt"])
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert _run(["--hf_dir", dirs / "base", "--out", tmp_path / "ckpt"]) == 0
    assert _run(["--to_hf", "--ckpt", tmp_path / "ckpt", "--out", tmp_path / "back"]) == 0
    back, base = (safetensors_io.tensor_index(d) for d in (tmp_path / "back", dirs / "base"))
    assert sorted(back) == sorted(base)
    for name, info in back.items():
        assert safetensors_io.read_tensor(info).tobytes() == (
            safetensors_io.read_tensor(base[name]).tobytes()
        ), name


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_what_a_killed_run_left_does_not_block_a_rerun(dirs, tmp_path, capsys):
    host = socket.gethostname()
    killed = tmp_path / f".merged.partial-{host}-{_dead_pid()}"
    ours = tmp_path / f".merged.partial-{host}-{os.getpid()}"  # a previous process of our pid
    running = tmp_path / f".merged.partial-{host}-{os.getppid()}"  # may still be writing
    elsewhere = tmp_path / ".merged.partial-other-host-1"  # its pid says nothing here
    for leftover in (killed, ours, running, elsewhere):
        leftover.mkdir()
        (leftover / "model-00001-of-00002.safetensors").write_bytes(b"half")
    (tmp_path / "merged").mkdir()  # a mounted volume's directory may be there, empty...
    (tmp_path / "merged" / f".partial-{host}-{_dead_pid()}").mkdir()  # ...with a leftover
    argv = ["--merge", "--hf_dir", dirs / "base", "--ahn_dir", dirs / "ahn"]
    assert _run([*argv, "--out", tmp_path / "merged"]) == 0
    assert _files(tmp_path / "merged") == _files(dirs / "merged")
    assert not killed.exists() and not ours.exists()
    assert running.exists() and elsewhere.exists()
    # a half-written directory an older version left is not taken for a finished one
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model-00001-of-00002.safetensors").write_bytes(b"half")
    assert _run([*argv, "--out", tmp_path / "old"]) == 2
    assert "it has no config.json: if an interrupted conversion left it, remove it" in (
        capsys.readouterr().err
    )


def test_split_publishes_both_directories_or_neither(dirs, tmp_path, monkeypatch):
    real, published = staging._publish, []

    def publish(partial, out):
        if published:
            raise OSError("disk gone")
        published.append(out)
        real(partial, out)

    monkeypatch.setattr(staging, "_publish", publish)
    argv = ["--split", "--hf_dir", dirs / "merged", "--out", tmp_path / "b"]
    with pytest.raises(OSError, match="disk gone"):
        _run([*argv, "--ahn_out", tmp_path / "a"])
    assert published == [(tmp_path / "b").resolve()]
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_is_written_into_and_kept(dirs, tmp_path, monkeypatch):
    """An existing empty --out (`.`, a mounted volume, a shared folder with its own mode) is the
    directory the files land in, not replaced by a renamed sibling (which left `--out .` a
    deleted directory and dropped the mode); interrupted, it is left as it was, empty."""
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o2770)
    before = volume.stat()
    monkeypatch.chdir(volume)
    argv = ["--merge", "--hf_dir", dirs / "base", "--ahn_dir", dirs / "ahn", *SMALL_SHARDS]
    argv += ["--out", "."]
    real = safetensors_io._write_file
    _interrupt_writer(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _run(argv)
    assert list(tmp_path.iterdir()) == [volume] and list(volume.iterdir()) == []
    monkeypatch.setattr(safetensors_io, "_write_file", real)
    assert _run(argv) == 0
    written = _files(volume)
    assert "config.json" in written and safetensors_io.INDEX_FILE in written
    assert list(tmp_path.iterdir()) == [volume]
    after = volume.stat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


def test_split_refuses_one_output_inside_the_other(dirs, tmp_path):
    argv = ["--split", "--hf_dir", dirs / "merged", "--out", tmp_path / "n"]
    assert _run([*argv, "--ahn_out", tmp_path / "n" / "ahn"]) == 2
    assert list(tmp_path.iterdir()) == []
