"""Output paths (kdlab.outputs) and, through the CLI, every command's handling of a user's files and of OS errors."""

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
from kdlab_testing import cli_args, run_cli

import kdlab
from kdlab.errors import KdlabError
from kdlab.io import atomic_dir, atomic_write_text
from kdlab.outputs import (
    FIDELITY,
    MANIFEST,
    OutputKind,
    check_output_dir,
    check_output_file,
    check_writable,
    read_manifest,
    same_settings,
)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdlab: error:") and "\n" not in err and "Traceback" not in err, err
    return err


def users_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.txt").write_text("years of work")
    return path


# ------------------------------------------------------------------ the rules


KIND = OutputKind("test-kind", "x", "m.json")


def ours(path: Path, *files: str) -> Path:
    """A ``KIND`` folder written by kdlab holding ``files``."""
    with atomic_dir(path, kind=KIND) as tmp:
        for name in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(name)
    return path


def test_output_folder_rules(tmp_path):
    assert check_output_dir(tmp_path / "new", KIND) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", KIND)
    check_output_dir(ours(tmp_path / "ours", "m.json", "sub/a.txt"), KIND)
    with pytest.raises(KdlabError, match=r"exists and is not a x folder .no .kdlab-output.json."):
        check_output_dir(users_folder(tmp_path / "user"), KIND)
    (tmp_path / "file").write_text("data")
    with pytest.raises(KdlabError, match="exists and is a file"):
        check_output_dir(tmp_path / "file", KIND)
    with pytest.raises(KdlabError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file" / "below", KIND)
    with pytest.raises(KdlabError, match="is a kdlab test-kind output, not a fidelity"):
        check_output_dir(tmp_path / "ours", FIDELITY)


def test_a_folder_is_kdlabs_by_its_manifest_not_by_a_file_name(tmp_path):
    """Why: a folder counted as a kdlab output as soon as it held a file named like a marker, and was replaced
    (with the user's files beside it) or written into."""
    mixed = users_folder(tmp_path / "mixed")
    (mixed / "m.json").write_text("{}")
    with pytest.raises(KdlabError, match=r"older kdlab .no .kdlab-output.json.; kdlab does not replace it: remove it"):
        check_output_dir(mixed, KIND)
    check_output_dir(mixed, KIND, resume=True)  # a resumed command only adds its own files: accepted
    folder = ours(tmp_path / "ours", "m.json", "sub/a.txt")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest == {
        "written_by": "kdlab",
        "kind": "test-kind",
        "kdlab_version": kdlab.__version__,
        "entries": ["m.json", "sub/a.txt"],
    }
    (folder / "sub" / "notes.md").write_text("mine")
    with pytest.raises(KdlabError, match=r"holds sub/notes.md, which kdlab did not write"):
        ours(folder, "m.json")
    assert (folder / "sub" / "notes.md").read_text() == "mine" and (folder / "m.json").is_file()
    check_output_dir(folder, KIND, resume=True)
    (folder / "sub" / "notes.md").unlink()
    ours(folder, "m.json")  # only what kdlab wrote: replaced
    assert sorted(path.name for path in folder.rglob("*")) == [MANIFEST, "m.json"]
    for entries in (["../outside"], ["/etc/passwd"], "m.json"):  # not kdlab's own record: refused
        (folder / MANIFEST).write_text(json.dumps({**manifest, "entries": entries}))
        assert read_manifest(folder) is None
        with pytest.raises(KdlabError, match="older kdlab"):
            check_output_dir(folder, KIND)


def test_a_replaced_folder_loses_only_what_its_manifest_lists(tmp_path, monkeypatch, capsys):
    """A file that appears between the check and the rename is kept, and said where."""
    import kdlab.outputs as outputs

    folder = ours(tmp_path / "ours", "m.json")
    real = outputs.check_output_dir
    calls = []

    def late_file(path, kind, *args, **kwargs):
        calls.append(path)
        result = real(path, kind, *args, **kwargs)
        if len(calls) == 2:
            (folder / "late.txt").write_text("appeared")
        return result

    monkeypatch.setattr(outputs, "check_output_dir", late_file)
    ours(folder, "m.json", "n.json")
    kept = [path for path in tmp_path.iterdir() if path.name.endswith(".old")]
    assert len(kept) == 1 and [path.name for path in kept[0].iterdir()] == ["late.txt"]
    assert f"kept what kdlab did not write in {kept[0]}" in capsys.readouterr().err
    assert sorted(path.name for path in folder.iterdir()) == [MANIFEST, "m.json", "n.json"]


def test_output_file_rules(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(KdlabError, match="is a folder"):
        check_output_file(tmp_path / "dir")
    (tmp_path / "f.json").write_text("[]")
    with pytest.raises(KdlabError, match="without --overwrite"):
        check_output_file(tmp_path / "f.json")
    check_output_file(tmp_path / "f.json", overwrite=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_place_is_refused(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(KdlabError, match="not writable"):
            check_writable(locked / "run")
    finally:
        locked.chmod(stat.S_IRWXU)


def test_settings_compare_by_content_not_path_strings(tmp_path, monkeypatch):
    data = tmp_path / "d.json"
    data.write_text("[]")
    monkeypatch.chdir(tmp_path)
    old = {"out": "runs/x/", "data": "d.json", "train": {"lr": 1}}
    assert same_settings(old, {"out": str(tmp_path / "moved"), "data": str(data), "train": {"lr": 1}}, ("data",)) == []
    assert same_settings(old, {"out": "runs/x", "data": "./d.json", "train": {"lr": 2}}, ("data",)) == [
        "train.lr: 1 -> 2"
    ]


# ------------------------------------------------------------------ atomic folders


def test_atomic_dir_never_replaces_a_users_file_or_folder(tmp_path):
    """Why: atomic_dir replaced any existing path (a folder of the user's files, or a file hidden as .NAME.old)."""
    folder = users_folder(tmp_path / "user")
    with pytest.raises(KdlabError, match="kdlab does not write into it"), atomic_dir(folder, kind=KIND) as tmp:
        (tmp / "x").write_text("new")
    with pytest.raises(KdlabError, match="kdlab does not replace it"), atomic_dir(folder) as tmp:
        (tmp / "x").write_text("new")
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(KdlabError, match="exists and is a file"), atomic_dir(tmp_path / "file") as tmp:
        pass
    assert (folder / "thesis.txt").read_text() == "years of work" and (tmp_path / "file").read_text() == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file", "user"]  # no .old, no temporary folder
    mine = tmp_path / "ours"
    for text in ("first", "second"):  # a kdlab output of the same kind is replaced
        with atomic_dir(mine, kind=KIND) as tmp:
            (tmp / "m.txt").write_text(text)
    assert (mine / "m.txt").read_text() == "second"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file", "ours", "user"]


def test_folders_honour_the_umask_like_files(tmp_path):
    """Why: folders written in one step were created 0700 whatever the umask."""
    old = os.umask(0o002)
    try:
        with atomic_dir(tmp_path / "shared") as tmp:
            (tmp / "f").write_text("x")
        atomic_write_text(tmp_path / "file.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o775
    assert stat.S_IMODE((tmp_path / "file.txt").stat().st_mode) == 0o664


def modes(folder: Path) -> dict[str, int]:
    return {path.relative_to(folder).as_posix(): stat.S_IMODE(path.stat().st_mode) for path in folder.rglob("*")}


def test_weights_and_checkpoints_honour_the_umask(tiny_models, synth_train, tmp_path, monkeypatch):
    """Why: *.safetensors were written 0600 whatever the umask (safetensors writes through an owner-only temporary
    file), so another user of a shared folder could not read the weights. Checkpoints are kept here (not removed
    at the end of the run) to check them too."""
    import kdlab.train.loop as loop

    monkeypatch.setattr(loop.shutil, "rmtree", lambda *args, **kwargs: None)
    old = os.umask(0o022)
    try:
        run, flags = tmp_path / "run", {"precision": "fp32", "max_steps": 2, "save_steps": 1, "batch_size": 4}
        assert run_cli("sft", model=tiny_models["student"], data=synth_train, out=run, lora_r=4, **flags) == 0
        assert run_cli("models", "prune", model=tiny_models["teacher"], keep_layers=1, out=tmp_path / "pruned") == 0
        assert run_cli("export", run, out=tmp_path / "export") == 0
    finally:
        os.umask(old)
    found = {
        f"{folder}/{name}": mode
        for folder in ("run", "pruned", "export")
        for name, mode in modes(tmp_path / folder).items()
    }
    expected = ["run/final/adapter_model.safetensors", "run/checkpoints/step-000001/state.safetensors"]
    assert set(expected + ["pruned/model.safetensors", "export/adapter_model.safetensors"]) <= set(found)
    for name, mode in found.items():
        assert mode == (0o755 if (tmp_path / name).is_dir() else 0o644), (name, oct(mode))


# ------------------------------------------------------------------ commands


def test_models_prune_refuses_a_users_folder_and_file(tiny_models, tmp_path, capsys):
    """Why: `models prune --out DIR` deleted a folder of the user's files and hid an existing file as .NAME.old."""
    folder = users_folder(tmp_path / "mine")
    assert run_cli("models", "prune", model=tiny_models["teacher"], keep_layers=1, out=folder) == 2
    assert "not a pruned model" in one_error_line(capsys)
    assert [path.name for path in folder.iterdir()] == ["thesis.txt"]
    (tmp_path / "notes.txt").write_text("keep")
    assert run_cli("models", "prune", model=tiny_models["teacher"], keep_layers=1, out=tmp_path / "notes.txt") == 2
    assert "exists and is a file" in one_error_line(capsys)
    assert (tmp_path / "notes.txt").read_text() == "keep" and not (tmp_path / ".notes.txt.old").exists()
    out = tmp_path / "pruned"
    for _ in range(2):  # an earlier pruned model is replaced
        assert run_cli("models", "prune", model=tiny_models["teacher"], keep_layers=1, out=out) == 0
    assert (out / "PRUNED.txt").is_file()


def evaluation_folders(root: Path) -> tuple[Path, Path]:
    """A teacher's and a student's evaluation folders (one arith prediction each), as fidelity reads them."""
    for side in ("teacher", "student"):
        (root / side / "predictions").mkdir(parents=True)
        record = {"id": 0, "prompt": "q", "gold": "2", "pred": "2", "correct": True, "output": "The answer is 2."}
        (root / side / "predictions" / "arith.jsonl").write_text(json.dumps(record) + "\n")
        (root / side / "metrics.json").write_text("{}")
    return root / "teacher", root / "student"


def test_a_marker_named_file_beside_a_users_files_is_not_kdlabs(tiny_models, tmp_path, capsys):
    """Why: `fidelity --out F` deleted notes.md beside a fidelity.json, `models prune --out M` deleted my_weights.bin
    beside a PRUNED.txt and `stats paper --out D` overwrote a user's own hypotheses.csv, all with exit 0."""
    teacher, student = evaluation_folders(tmp_path)
    fid, pruned, stats = (users_folder(tmp_path / name) for name in ("fid", "pruned", "stats"))
    (fid / "fidelity.json").write_text("{}")
    (pruned / "PRUNED.txt").write_text("mine")
    (stats / "hypotheses.csv").write_text("my hypotheses")
    (tmp_path / "r.csv").write_text(PAPER_CSV)
    assert run_cli("fidelity", teacher=teacher, student=student, out=fid, no_embeddings=True) == 2
    assert "older kdlab" in one_error_line(capsys)
    assert run_cli("models", "prune", model=tiny_models["teacher"], keep_layers=1, out=pruned) == 2
    assert "older kdlab" in one_error_line(capsys)
    assert run_cli("stats", "paper", results=tmp_path / "r.csv", out=stats) == 2
    assert "older kdlab" in one_error_line(capsys)
    for folder, marker, text in ((fid, "fidelity.json", "{}"), (pruned, "PRUNED.txt", "mine")):
        assert {path.name: path.read_text() for path in folder.iterdir()} == {
            "thesis.txt": "years of work",
            marker: text,
        }
    assert (stats / "hypotheses.csv").read_text() == "my hypotheses"


def test_a_kdlab_output_with_a_users_file_added_is_not_replaced(tiny_models, tmp_path, capsys):
    """Written twice (replaced: only kdlab's files), then a user's file beside them: refused, everything kept."""
    teacher, student = evaluation_folders(tmp_path)
    fid = tmp_path / "fid"
    for _ in range(2):
        assert run_cli("fidelity", teacher=teacher, student=student, out=fid, no_embeddings=True) == 0
    assert read_manifest(fid)["entries"] == ["fidelity.json", "pairs/arith.jsonl"]
    (fid / "notes.md").write_text("mine")
    assert run_cli("fidelity", teacher=teacher, student=student, out=fid, no_embeddings=True) == 2
    assert "holds notes.md, which kdlab did not write" in one_error_line(capsys)
    assert (fid / "notes.md").read_text() == "mine" and (fid / "fidelity.json").is_file()


def test_an_evaluation_of_an_older_kdlab_resumes(tiny_models, tmp_path):
    """An interrupted evaluation folder without the manifest (older kdlab) is resumed in place and claimed."""
    from kdlab.data.synth import write_synth

    write_synth(tmp_path / "data" / "arith" / "test.json", n=2, seed=1, split="test")
    out, flags = tmp_path / "eval", {"tasks": "arith", "data_dir": tmp_path / "data", "max_new_tokens": 4}
    assert run_cli("eval", model=tiny_models["student"], out=out, **flags) == 0
    (out / MANIFEST).unlink()
    (out / "metrics.json").unlink()
    assert run_cli("eval", model=tiny_models["student"], out=out, **flags) == 0
    assert (out / "metrics.json").is_file()
    assert read_manifest(out)["entries"] == ["config.yaml", "metrics.json", "predictions/"]


def test_eval_out_an_existing_file(tiny_models, tmp_path, capsys):
    from kdlab.data.synth import write_synth

    write_synth(tmp_path / "data" / "arith" / "test.json", n=2, seed=1, split="test")
    (tmp_path / "results.txt").write_text("keep")
    assert (
        run_cli(
            "eval",
            model=tiny_models["student"],
            tasks="arith",
            data_dir=tmp_path / "data",
            out=tmp_path / "results.txt",
        )
        == 2
    )
    assert "exists and is a file" in one_error_line(capsys)
    assert (tmp_path / "results.txt").read_text() == "keep"


def test_data_synth_out_a_folder_or_a_users_file(tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    assert run_cli("data", "synth", n=3, out=tmp_path / "dir") == 2
    assert "is a folder" in one_error_line(capsys)
    (tmp_path / "mine.json").write_text('[{"instruction": "mine"}]')
    assert run_cli("data", "synth", n=3, out=tmp_path / "mine.json") == 2
    assert "without --overwrite" in one_error_line(capsys)
    assert "mine" in (tmp_path / "mine.json").read_text()
    assert run_cli("data", "synth", n=3, out=tmp_path / "s.json") == 0
    assert run_cli("data", "synth", n=3, out=tmp_path / "s.json") == 0  # the same problems: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    assert run_cli("data", "synth", n=3, out=tmp_path / "mine.json", overwrite=True) == 0
    assert len(json.loads((tmp_path / "mine.json").read_text())) == 3


def test_stats_paper_out_an_existing_file_or_users_folder(tmp_path, capsys):
    (tmp_path / "out.txt").write_text("keep")
    assert run_cli("stats", "paper", results=tmp_path / "r.csv", out=tmp_path / "out.txt") == 2
    assert "exists and is a file" in one_error_line(capsys)
    assert run_cli("stats", "paper", results=tmp_path / "r.csv", out=users_folder(tmp_path / "u")) == 2
    assert "not a kdlab stats paper output folder" in one_error_line(capsys)


def test_models_convert_of_a_file_that_is_not_gguf(tmp_path, capsys):
    (tmp_path / "model.gguf").write_text("not a model")
    assert run_cli("models", "convert", model=tmp_path / "model.gguf") == 2
    assert "not a GGUF file" in one_error_line(capsys)
    (tmp_path / "weights.bin").write_text("x")
    assert run_cli("models", "convert", model=tmp_path / "weights.bin") == 2
    assert "not a model folder" in one_error_line(capsys)


PAPER_CSV = (
    "Teacher,Student,Method,taskA\n-,M-0.5B,SFT,10\n-,M-2B,SFT,20\nM-7B,M-0.5B,student_KD_temp_1.0,12\n"
    "M-7B,M-2B,student_KD_temp_1.0,22\nM-7B,M-0.5B,student_RevKD_temp_1.0,11\nM-7B,M-2B,student_RevKD_temp_1.0,26\n"
)


def _denied(path):
    return PermissionError(errno.EACCES, "Permission denied", str(path))


@pytest.mark.parametrize("command", ["sft", "eval", "data synth", "models prune", "fidelity", "stats paper"])
def test_a_permission_error_on_an_output_is_one_line(command, tiny_models, synth_train, tmp_path, capsys, monkeypatch):
    """Why: a read-only output folder gave a PermissionError traceback (exit 1). Simulated (tests may run as root):
    every temporary file or folder creation and every mkdir under the output is denied."""
    out = tmp_path / "ro"

    def deny_mkstemp(*args, dir=None, **kwargs):
        raise _denied(dir)

    def deny_mkdtemp(*args, dir=None, **kwargs):
        raise _denied(dir)

    real_mkdir = Path.mkdir

    def deny_mkdir(self, *args, **kwargs):
        if str(self).startswith(str(out)):
            raise _denied(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", deny_mkstemp)
    monkeypatch.setattr(tempfile, "mkdtemp", deny_mkdtemp)
    monkeypatch.setattr(Path, "mkdir", deny_mkdir)
    eval_dir = tmp_path / "e"
    if command == "fidelity":
        evaluation_folders(tmp_path)  # outside the denied output
    argv = {
        "sft": cli_args("sft", model=tiny_models["student"], data=synth_train, out=out, max_steps=1, precision="fp32"),
        "eval": cli_args("eval", model=tiny_models["student"], tasks="arith", data_dir=eval_dir, out=out),
        "data synth": cli_args("data", "synth", n=2, out=out / "s.json"),
        "models prune": cli_args("models", "prune", model=tiny_models["teacher"], keep_layers=1, out=out),
        "fidelity": cli_args(
            "fidelity", teacher=tmp_path / "teacher", student=tmp_path / "student", out=out, no_embeddings=True
        ),
        "stats paper": cli_args("stats", "paper", results=tmp_path / "r.csv", out=out),
    }[command]
    if command == "eval":
        real_mkdir(eval_dir / "arith", parents=True)
        (eval_dir / "arith" / "test.json").write_text(
            json.dumps([{"instruction": "1+1?", "input": "", "output": "The answer is 2.", "answer": "2"}])
        )
    if command == "stats paper":
        (tmp_path / "r.csv").write_text(PAPER_CSV)
    assert run_cli(*argv) == 2
    err = one_error_line(capsys)
    assert "Permission denied" in err or "not writable" in err or "ro" in err
    assert not out.exists()
