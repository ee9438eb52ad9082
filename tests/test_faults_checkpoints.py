"""Fault injection, untrusted files: loading a checkpoint, model, graph or cache file never runs code from
it, and the toolkit runs no shell command except the ``cmd |`` pipes of a Kaldi wav.scp.

* A static audit of distill/ (Python's ast): every ``torch.load`` passes ``weights_only=True``; nothing
  calls pickle/marshal/dill/joblib loaders, ``np.load(allow_pickle=True)``, unsafe YAML loading,
  ``torch.jit.load``, ``eval``/``exec``, ``os.system``/``os.popen``; ``shell=True`` appears only in the
  wav.scp-pipe runner.
* A crafted pickle whose unpickling would run ``touch <marker>`` (via ``os.system``), saved in torch's
  zip format, torch's legacy format and as a bare pickle, is fed to every loader: training checkpoints
  (resume, averaging, model files), Hugging Face directories (``pytorch_model.bin``, sharded), fairseq
  ``.pt`` imports, the LF-MMI denominator graph and the teacher cache. Each refuses it with an error
  naming the file (the teacher cache, a cache, warns and recomputes), and the marker never appears.
* The same files through the entry points: ``distill.bin.train`` (resume checkpoint, teacher directory,
  fairseq teacher, den graph, teacher cache) and ``distill.bin.transcribe --model``.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import test_train_stages as stages  # noqa: E402  (tests/ is on sys.path under pytest)
import torch

from distill.train import checkpoint as ck

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "distill"
# the only function allowed to run a shell: it executes Kaldi wav.scp `cmd |` entries, by design
SHELL_ALLOWED = {("distill/data/pipe.py", "run_pipe")}


# ------------------------------------------------------------------------------------------ static audit
def _calls(tree: ast.AST):
    """``(dotted callee name, call node, enclosing function name)`` for every call in ``tree``."""

    def name(node: ast.AST) -> str:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            return f"{name(node.value)}.{node.attr}"
        return "?"

    def walk(node: ast.AST, func: str):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                yield name(child.func), child, f
            yield from walk(child, f)

    yield from walk(tree, "<module>")


def _kw(call: ast.Call, key: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def audit(source: str, rel: str) -> tuple[list[str], list[tuple[str, str]], int]:
    """Unsafe calls in one module's source, its ``shell=True`` call sites and its number of torch.load calls."""
    problems, shells, torch_loads = [], [], 0
    for callee, call, func in _calls(ast.parse(source)):
        where = f"{rel}:{call.lineno} ({func})"
        if callee == "torch.load":
            torch_loads += 1
            if not _is_true(_kw(call, "weights_only")):
                problems.append(f"{where}: torch.load without weights_only=True")
        if callee in (
            "pickle.load",
            "pickle.loads",
            "pickle.Unpickler",
            "marshal.load",
            "marshal.loads",
            "dill.load",
            "dill.loads",
            "joblib.load",
            "cloudpickle.load",
            "cloudpickle.loads",
            "yaml.unsafe_load",
            "yaml.full_load",
            "torch.jit.load",
            "eval",
            "exec",
            "os.system",
            "os.popen",
            "os.execv",
            "os.execvp",
            "pty.spawn",
        ):
            problems.append(f"{where}: calls {callee}")
        if callee in ("np.load", "numpy.load") and _is_true(_kw(call, "allow_pickle")):
            problems.append(f"{where}: np.load(allow_pickle=True)")
        if callee == "yaml.load":
            loader = _kw(call, "Loader")
            if not (isinstance(loader, ast.Attribute) and loader.attr in ("SafeLoader", "CSafeLoader")):
                problems.append(f"{where}: yaml.load without SafeLoader")
        if _is_true(_kw(call, "shell")):
            shells.append((rel, func))
    return problems, shells, torch_loads


def test_static_audit_of_loaders_and_shell_use() -> None:
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 40
    problems, shells, torch_loads = [], [], {}
    for path in files:
        rel = str(path.relative_to(REPO))
        p, s, n = audit(path.read_text(encoding="utf-8"), rel)
        problems += p
        shells += s
        if n:
            torch_loads[rel] = n
    assert not problems, "\n".join(problems)
    # the audit did find the loaders, all in one module (checkpoints, graphs, cache and model imports use it)
    assert set(torch_loads) == {"distill/safe_load.py"} and torch_loads["distill/safe_load.py"] >= 2, torch_loads
    assert set(shells) == SHELL_ALLOWED, shells


def test_the_audit_finds_unsafe_calls() -> None:
    bad = (
        "import torch, pickle, os, subprocess, yaml, numpy as np\n"
        "def f(p):\n    torch.load(p)\n    torch.load(p, weights_only=False)\n    pickle.loads(p)\n"
        "    np.load(p, allow_pickle=True)\n    yaml.load(p)\n    os.system(p)\n"
        "def g(c):\n    subprocess.run(c, shell=True)\n"
    )
    problems, shells, n = audit(bad, "bad.py")
    assert n == 2 and len(problems) == 6 and shells == [("bad.py", "g")], problems


# ------------------------------------------------------------------------------------------ crafted pickles
class _Evil:
    """Unpickling this object runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def write_evil(path: Path, marker: Path, fmt: str, wrap: str = "checkpoint") -> Path:
    """A file whose unpickling calls os.system; ``wrap`` shapes it like the file the loader expects."""
    evil = _Evil(marker)
    obj = {
        "checkpoint": {"format": ck.CKPT_FORMAT, "model": {"w": torch.zeros(2)}, "trainer": evil},
        "model_file": {"format": ck.MODEL_FORMAT, "model": {"w": torch.zeros(2)}, "meta": evil},
        "state_dict": {"w": torch.zeros(2), "b": evil},
        "fairseq": {"args": evil, "model": {}},
        "fsa": {"format": "distill-fsa-v1", "src": evil},
        "cache": {"id": "x", "out": evil},
    }[wrap]
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "zip":
        torch.save(obj, path)
    elif fmt == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    # the marker would be created by an unsafe load: prove the file is armed
    assert not marker.exists()
    return path


FORMATS = ["zip", "legacy", "raw"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults_ckpt")
    lang = stages.make_lang(root)
    from distill.data.tokenizer import Tokenizer

    vocab = Tokenizer.load(lang).vocab_size
    teacher = stages.make_teacher_hf(root, vocab)
    return root, lang, teacher, vocab


def test_the_crafted_pickle_is_armed(tmp_path: Path) -> None:
    """Oracle: an unrestricted load of the same file does run the command (so the refusals below mean
    something)."""
    marker = tmp_path / "pwned"
    p = write_evil(tmp_path / "evil.pt", marker, "zip")
    torch.load(p, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_loader_refuses_the_crafted_pickle(env, tmp_path: Path, fmt: str) -> None:
    from distill.graph.fsa import Fsa
    from distill.models import CheckpointError as ModelCheckpointError
    from distill.models import load_pretrained
    from distill.train.averaging import average_checkpoints
    from distill.train.teacher_cache import TeacherCache

    root, lang, teacher, _ = env
    marker = tmp_path / "pwned"

    p = write_evil(tmp_path / "ckpts" / "ckpt-00000004.pt", marker, fmt)
    with pytest.raises(ck.CheckpointError, match=r"ckpt-00000004\.pt' is refused"):
        ck.load(p)
    assert ck.latest_valid_checkpoint(tmp_path / "ckpts") is None  # skipped, with a warning naming it
    m = write_evil(tmp_path / "best.pt", marker, fmt, "model_file")
    with pytest.raises(ck.CheckpointError, match=r"best\.pt' is refused"):
        ck.load_model_state(m)
    good = tmp_path / "good.pt"
    ck.save_model_file({"w": torch.zeros(2)}, good)
    with pytest.raises(ck.CheckpointError, match=r"best\.pt' is refused"):
        average_checkpoints([good, m])

    with pytest.raises(ValueError, match=r"den\.pt: cannot read the graph: it holds the Python object"):
        Fsa.load(write_evil(tmp_path / "den.pt", marker, fmt, "fsa"))

    hf = tmp_path / "hf"
    shutil.copytree(teacher, hf)
    (hf / "model.safetensors").unlink()
    write_evil(hf / "pytorch_model.bin", marker, fmt, "state_dict")
    with pytest.raises(ModelCheckpointError, match=r"pytorch_model\.bin: (refusing to unpickle|cannot be loaded)"):
        load_pretrained(hf)
    (hf / "pytorch_model.bin").rename(hf / "pytorch_model-00001-of-00001.bin")
    (hf / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"w": "pytorch_model-00001-of-00001.bin"}})
    )
    with pytest.raises(ModelCheckpointError, match=r"00001-of-00001\.bin: (refusing to unpickle|cannot be loaded)"):
        load_pretrained(hf)
    with pytest.raises(ModelCheckpointError, match=r"evil_fairseq\.pt: (refusing to unpickle|cannot be loaded)"):
        load_pretrained(write_evil(tmp_path / "evil_fairseq.pt", marker, fmt, "fairseq"))

    cache = TeacherCache(tmp_path / "cache", {"teacher": "t"})
    cache.open()
    write_evil(cache._path("utt-1"), marker, fmt, "cache")
    assert cache.get("utt-1") is None  # unreadable entry: recomputed by the caller (warning logged)
    assert not marker.exists()


def test_refusal_messages_name_the_global(env, tmp_path: Path) -> None:
    """A refusal names the refused object and does not advise retrying with ``weights_only=False``."""
    from distill.models import CheckpointError as ModelCheckpointError
    from distill.models import load_pretrained

    marker = tmp_path / "pwned"
    with pytest.raises(ModelCheckpointError, match=r"refusing to unpickle global '(posix|os)\.system'"):
        load_pretrained(write_evil(tmp_path / "f.pt", marker, "zip", "fairseq"))
    for fmt in ("zip", "legacy"):  # (a bare pickle of tensors is refused earlier, at torch's own reducer)
        with pytest.raises(
            ck.CheckpointError,
            match=r"c\.pt' is refused: it holds the Python object "
            r"'(posix|os)\.system'.*never load it with weights_only=False",
        ):
            ck.load(write_evil(tmp_path / "c.pt", marker, fmt))
    assert not marker.exists()


def _truncated(path: Path) -> Path:
    """The first half of a valid torch file (a writer killed mid-write on a filesystem without atomic rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("fault", ["global", "truncated"])
def test_every_loader_fails_alike(tmp_path: Path, fault: str) -> None:
    """Every loader of a pickled file (pretrained import, training checkpoint and model file, den graph,
    teacher-cache entry) goes through distill.safe_load and fails the same way: the one CheckpointError (a
    ValueError and a RuntimeError, as the two it replaced were), whose message names the file (and the refused
    object) and whose ``path``/``detail`` are the file and the same reason for every loader."""
    from distill import safe_load
    from distill.graph.fsa import Fsa
    from distill.models import CheckpointError as ModelCheckpointError
    from distill.models import load_pretrained
    from distill.train.teacher_cache import TeacherCache

    assert ModelCheckpointError is ck.CheckpointError is safe_load.CheckpointError
    assert issubclass(safe_load.CheckpointError, ValueError) and issubclass(safe_load.CheckpointError, RuntimeError)
    marker = tmp_path / "pwned"
    cache = TeacherCache(tmp_path / "cache", {"teacher": "t"})
    cache.open()
    loaders = {  # name: (file, shape of the crafted file, load)
        "pretrained fairseq .pt": (tmp_path / "fairseq.pt", "fairseq", load_pretrained),
        "training checkpoint": (tmp_path / "ckpts" / "ckpt-00000004.pt", "checkpoint", ck.load),
        "model file": (tmp_path / "best.pt", "model_file", ck.load_model_state),
        "den graph": (tmp_path / "lang" / "den.pt", "fsa", Fsa.load),
        "teacher cache entry": (cache._path("utt-1"), "cache", lambda p: cache.read("utt-1")),
    }
    details = {}
    for name, (path, wrap, load) in loaders.items():
        if fault == "global":
            write_evil(path, marker, "zip", wrap)
        else:
            _truncated(path)
        with pytest.raises(safe_load.CheckpointError) as e:
            load(path)
        err = e.value
        assert err.path == path and str(path) in str(err), (name, str(err))
        if fault == "global":
            assert re.search(r"'(posix|os)\.system'", str(err)), (name, str(err))
        details[name] = err.detail
    assert len(set(details.values())) == 1, details
    detail = next(iter(details.values()))
    if fault == "global":
        assert re.fullmatch(
            r"it holds the Python object '(posix|os)\.system', .*never load it with "
            r"weights_only=False\)",
            detail,
        ), detail
    else:
        assert detail.startswith("RuntimeError: ") and "Weights only" not in detail, detail
    assert cache.get("utt-1") is None  # the cache itself recomputes an unreadable entry (with a warning)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ entry points
def _train(env, tmp: Path, capsys, task: str = "distill", *overrides: str, **cfg_kw) -> tuple[int, str]:
    from distill.bin import train as train_cli

    exp = tmp / "exp"
    cfg = stages.stage_cfg(env, exp, task, **cfg_kw)
    cfg["train"] = stages.base_train(exp, steps=1)
    tmp.mkdir(parents=True, exist_ok=True)
    path = stages.write_cfg(tmp / "cfg.yaml", cfg)
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--config", str(path), *overrides])
    return e.value.code, capsys.readouterr().err


def test_train_entry_point_refuses_crafted_files(env, tmp_path: Path, capsys) -> None:
    root, lang, teacher, _ = env
    marker = tmp_path / "pwned"

    # a resume checkpoint
    write_evil(tmp_path / "exp" / "checkpoints" / "ckpt-00000002.pt", marker, "zip")
    code, err = _train(env, tmp_path, capsys, "teacher")
    assert code == 1 and "no checkpoint in" in err and "is readable" in err, err[-2000:]
    assert "ckpt-00000002.pt' is refused: it holds the Python object" in (tmp_path / "exp" / "train.log").read_text()
    shutil.rmtree(tmp_path / "exp")

    # a teacher given as a Hugging Face directory, as a fairseq checkpoint; a denominator graph
    hf = tmp_path / "hf"
    shutil.copytree(teacher, hf)
    (hf / "model.safetensors").unlink()
    write_evil(hf / "pytorch_model.bin", marker, "zip", "state_dict")
    code, err = _train(env, tmp_path, capsys, "distill", teacher=str(hf))
    assert code == 2 and "key 'teacher'" in err and "pytorch_model.bin: refusing to unpickle global" in err, err
    fs = write_evil(tmp_path / "fairseq.pt", marker, "zip", "fairseq")
    code, err = _train(env, tmp_path, capsys, "distill", teacher=str(fs))
    assert code == 2 and "key 'teacher'" in err and "fairseq.pt: refusing to unpickle global" in err, err
    den = write_evil(tmp_path / "den.pt", marker, "zip", "fsa")
    code, err = _train(env, tmp_path, capsys, "teacher", den=str(den))
    assert code == 2 and "key 'den'" in err and "den.pt: cannot read the graph" in err, err[-2000:]
    assert not marker.exists()


def test_train_teacher_cache_recomputes_crafted_entries(env, tmp_path: Path, capsys) -> None:
    cache_dir = tmp_path / "cache"
    code, err = _train(
        env,
        tmp_path / "a",
        capsys,
        "distill",
        teacher_cache=True,
        teacher_cache_dtype="float32",
        teacher_cache_dir=str(cache_dir),
    )
    assert code == 0, err[-2000:]
    entries = [p for p in cache_dir.rglob("*.pt")]
    assert entries
    marker = tmp_path / "pwned"
    for p in entries:
        p.unlink()
        write_evil(p, marker, "zip", "cache")
    code, err = _train(
        env,
        tmp_path / "b",
        capsys,
        "distill",
        teacher_cache=True,
        teacher_cache_dtype="float32",
        teacher_cache_dir=str(cache_dir),
    )
    assert code == 0, err[-2000:]
    log = (tmp_path / "b" / "exp" / "train.log").read_text()
    assert "is unreadable (it holds the Python object" in log and "recomputing it" in log
    assert not marker.exists()
    # the recomputed entries replaced the crafted ones
    assert all(isinstance(torch.load(p, weights_only=True)["id"], str) for p in entries)


def test_transcribe_refuses_a_crafted_model(env, tmp_path: Path, capsys) -> None:
    from distill.bin import transcribe

    root, lang, teacher, _ = env
    marker = tmp_path / "pwned"
    hf = tmp_path / "hf"
    shutil.copytree(teacher, hf)
    (hf / "model.safetensors").unlink()
    write_evil(hf / "pytorch_model.bin", marker, "legacy", "state_dict")
    wav = next((root / "wav").glob("*.wav"))
    rc = transcribe.main(["--model", str(hf), "--lang-dir", str(lang), str(wav)])
    err = capsys.readouterr().err
    assert rc == 2 and "pytorch_model.bin" in err and "Traceback" not in err, err
    assert not marker.exists()


def test_training_files_load_as_models(env, tmp_path: Path, capsys) -> None:
    """A run's own model files and checkpoints (``last.pt``, ``checkpoints/ckpt-*.pt``) given where a model is
    expected load as the model they hold (the configuration they carry, the trained model's weights), for
    ``transcribe --model``, ``teacher=`` and ``student.init_from=``; they carry no tokens, so transcribe asks
    for ``--lang-dir``. A model file without a configuration is refused, pointing to ``<exp_dir>/model``.
    (This was "fairseq checkpoint without a model configuration".)"""
    from safetensors.torch import load_file

    from distill.bin import transcribe
    from distill.models import load_pretrained

    root, lang, _, _ = env
    code, err = _train(env, tmp_path / "t", capsys, "teacher")
    assert code == 0, err[-2000:]
    exp = tmp_path / "t" / "exp"
    ckpt = exp / "checkpoints" / "ckpt-00000001.pt"
    exported = load_file(str(exp / "model" / "model.safetensors"))
    for f in (exp / "last.pt", ckpt):  # one update: the exported model holds these very weights
        sd = load_pretrained(f).state_dict()
        assert all(torch.equal(sd[k], v) for k, v in exported.items() if k in sd), f
    wav = sorted((root / "wav").glob("dev-*.wav"))
    hyps = {}
    for model in (exp / "model", exp / "last.pt", ckpt):
        rc = transcribe.main(["--model", str(model), "--lang-dir", str(lang), *map(str, wav)])
        out = capsys.readouterr()
        assert rc == 0, out.err
        hyps[model.name] = out.out
    assert hyps["last.pt"] == hyps["model"] == hyps[ckpt.name] and hyps["model"].count("\n") == len(wav)
    rc = transcribe.main(["--model", str(exp / "last.pt"), str(wav[0])])
    assert rc == 2 and "pass --lang-dir" in capsys.readouterr().err

    code, err = _train(
        env,
        tmp_path / "d",
        capsys,
        "distill",
        teacher=str(exp / "last.pt"),
        student={"init_from": str(ckpt), "overrides": {}},
    )
    assert code == 0, err[-2000:]

    bare = tmp_path / "bare.pt"
    ck.save_model_file({"w": torch.zeros(2)}, bare)
    rc = transcribe.main(["--model", str(bare), "--lang-dir", str(lang), str(wav[0])])
    err = capsys.readouterr().err
    assert rc == 2 and "does not carry its model's configuration" in err and "<exp_dir>/model" in err, err
    assert "Traceback" not in err
