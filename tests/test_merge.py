"""`bonsynth merge`: every method against a plain float64 re-implementation, reward heads, the seed recipes, errors."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click
import pytest
import torch
import yaml
from safetensors.torch import load_file

from bonsynth.cli.common import run_guarded
from bonsynth.demo.models import save_model, tiny_causal_lm, tiny_reward_model, train_tokenizer

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SMALL = {"n_layer": 3, "n_embd": 32, "n_head": 2, "n_positions": 64}


# ------------------------------------------------------------------------------------------------- fixtures


def _finetune(model, base_sd: dict, seed: int, scale: float = 0.02):
    """Give `model` the base's body plus small noise: deltas of both signs, like a real fine-tune."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    for k, v in base_sd.items():
        key = k if k in sd else None
        if key is None:
            continue
        sd[key] = v + scale * torch.randn(v.shape, generator=g)
    model.load_state_dict(sd)
    return model


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    tok = train_tokenizer(["the quick brown fox jumps over the lazy dog", "hello world, merge me"] * 10, vocab_size=300)
    base = tiny_causal_lm(tok, seed=0, **SMALL)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    paths = {"base": save_model(base, tok, d / "base")}
    for i in (1, 2, 3):
        paths[f"lm{i}"] = save_model(_finetune(tiny_causal_lm(tok, seed=i, **SMALL), base_sd, seed=i), tok, d / f"lm{i}")
    rm_sd = base_sd  # same `transformer.*` body names; the LM's lm_head has no place in the classifier
    paths["thumbs"] = save_model(_finetune(tiny_reward_model(tok, num_labels=2, seed=4, **SMALL), rm_sd, 4), tok, d / "thumbs")
    paths["pairs"] = save_model(_finetune(tiny_reward_model(tok, num_labels=1, seed=5, **SMALL), rm_sd, 5), tok, d / "pairs")
    paths["hh"] = save_model(_finetune(tiny_reward_model(tok, num_labels=1, seed=6, **SMALL), rm_sd, 6), tok, d / "hh")
    paths["wide"] = save_model(tiny_causal_lm(tok, seed=7, **{**SMALL, "n_embd": 48}), tok, d / "wide")
    return {"dir": d, "tok": tok, **{k: str(v) for k, v in paths.items()}}


def _write(tmp_path: Path, cfg: dict | str, name: str = "merge.yml") -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False))
    return p


def _merge(tmp_path: Path, cfg: dict, **kw) -> tuple[dict, dict[str, torch.Tensor]]:
    from bonsynth.merge import run_merge

    out = tmp_path / "out"
    summary = run_merge(_write(tmp_path, cfg), out, **kw)
    return summary, load_file(str(out / "model.safetensors"))


def _sd(path: str) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in load_file(str(Path(path) / "model.safetensors")).items()}


# ----------------------------------------------------------------------------- float64 reference implementations


def ref_linear(xs, ws, normalize=True):
    total = sum(w * x for w, x in zip(ws, xs, strict=True))
    return total / sum(ws) if normalize else total


def ref_topk(delta, density):
    n = delta.numel()
    k = max(1, int(density * n))
    order = torch.sort(delta.abs().reshape(-1), descending=True).indices  # a full sort, on purpose
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:k]] = True
    return delta * mask.reshape(delta.shape)


def ref_task(base, xs, ws, densities, *, ties: bool, normalize: bool, lam: float = 1.0):
    deltas = [w * (ref_topk(x - base, d) if ties else x - base) for x, w, d in zip(xs, ws, densities, strict=True)]
    if ties:
        majority = torch.where(sum(deltas) >= 0, 1.0, -1.0).double()
        masks = [(torch.sign(d) == majority).double() for d in deltas]
        mixed = sum(d * m for d, m in zip(deltas, masks, strict=True))
        div = sum(w * m for w, m in zip(ws, masks, strict=True))
        div = torch.where(div == 0, torch.ones_like(div), div)
    else:
        mixed = sum(deltas)
        div = sum(ws) if abs(sum(ws)) >= 1e-8 else 1.0
    if normalize:
        mixed = mixed / div
    return base + lam * mixed


def ref_slerp(t, a, b):
    va, vb = a.reshape(-1), b.reshape(-1)
    na, nb = (float(v.norm()) if float(v.norm()) > 1e-8 else 1.0 for v in (va, vb))  # a zero tensor: norm 1
    dot = float(torch.dot(va / na, vb / nb).clamp(-1, 1))
    if abs(dot) > 0.9995:
        return (1 - t) * a + t * b
    theta = torch.acos(torch.tensor(dot, dtype=torch.float64))
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)


def _close(out: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(out) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(out[k].double(), v, rtol=1e-5, atol=2e-6, msg=k)


# ----------------------------------------------------------------------------------------------------- methods


def test_linear_matches_reference(zoo, tmp_path):
    cfg = {"merge_method": "linear", "models": [
        {"model": zoo["lm1"], "parameters": {"weight": 0.3}},
        {"model": zoo["lm2"], "parameters": {"weight": 1.2}},
        {"model": zoo["lm3"], "parameters": {"weight": 0.5}}]}
    summary, out = _merge(tmp_path, cfg)
    sds = [_sd(zoo[m]) for m in ("lm1", "lm2", "lm3")]
    _close(out, {k: ref_linear([s[k] for s in sds], [0.3, 1.2, 0.5]) for k in sds[0]})
    assert summary["merge_method"] == "linear" and summary["num_tensors"] == len(sds[0])
    assert not summary["reward_model"]


def test_task_arithmetic_matches_reference(zoo, tmp_path):
    cfg = {"merge_method": "task_arithmetic", "base_model": zoo["base"], "parameters": {"lambda": 0.7},
           "models": [{"model": zoo["lm1"], "parameters": {"weight": 0.5}},
                      {"model": zoo["lm2"], "parameters": {"weight": -0.25}}]}
    _, out = _merge(tmp_path, cfg)
    b, s1, s2 = _sd(zoo["base"]), _sd(zoo["lm1"]), _sd(zoo["lm2"])
    _close(out, {k: ref_task(b[k], [s1[k], s2[k]], [0.5, -0.25], [1, 1], ties=False, normalize=False, lam=0.7)
                 for k in b})


@pytest.mark.parametrize("normalize", [True, False])
def test_ties_matches_reference(zoo, tmp_path, normalize):
    dens = [0.5, 0.3, 0.9]
    ws = [0.5, 0.6, 0.05]
    cfg = {"merge_method": "ties", "base_model": zoo["base"],
           "parameters": {"normalize": normalize, "int8_mask": True, "lambda": 1.5},
           "models": [{"model": zoo["base"]}] + [
               {"model": zoo[m], "parameters": {"weight": w, "density": d}}
               for m, w, d in zip(("lm1", "lm2", "lm3"), ws, dens, strict=True)]}
    _, out = _merge(tmp_path, cfg)
    b = _sd(zoo["base"])
    sds = [_sd(zoo[m]) for m in ("lm1", "lm2", "lm3")]
    _close(out, {k: ref_task(b[k], [s[k] for s in sds], ws, dens, ties=True, normalize=normalize, lam=1.5) for k in b})


def test_slerp_matches_reference_with_gradient_and_filter(zoo, tmp_path):
    cfg = {"merge_method": "slerp", "base_model": zoo["base"],
           "slices": [{"sources": [{"model": zoo["base"], "layer_range": [0, 3]},
                                   {"model": zoo["lm1"], "layer_range": [0, 3]}]}],
           "parameters": {"t": [{"filter": "attn", "value": [0.0, 1.0]}, {"value": 0.3}]}}
    _, out = _merge(tmp_path, cfg)
    b, s1 = _sd(zoo["base"]), _sd(zoo["lm1"])
    expected = {}
    for k in b:
        m = re.match(r"transformer\.h\.(\d+)\.", k)
        t = 0.3
        if "attn" in k:
            t = int(m.group(1)) / 2 if m else 0.0  # layer i of 3: t = i / 2; gradient start (0) elsewhere
        expected[k] = ref_slerp(t, b[k], s1[k])
    _close(out, expected)


def test_dare_is_seeded_and_rescales_l1(zoo, tmp_path):
    cfg = {"merge_method": "dare_linear", "base_model": zoo["base"],
           "models": [{"model": zoo["lm1"], "parameters": {"weight": 1.0, "density": 0.4}}]}
    s1, a = _merge(tmp_path / "a", cfg, random_seed=7)
    _, b = _merge(tmp_path / "b", cfg, random_seed=7)
    _, c = _merge(tmp_path / "c", cfg, random_seed=8)
    assert s1["random_seed"] == 7
    name = "transformer.h.0.mlp.c_fc.weight"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[name], c[name])
    base, ft = _sd(zoo["base"])[name], _sd(zoo["lm1"])[name]
    delta, got = ft - base, a[name].double() - base
    kept = got != 0
    assert 0.3 < kept.double().mean() < 0.5  # Bernoulli(0.4)
    scale = delta.abs().sum() / delta[kept].abs().sum()  # mergekit 0.1.5: rescale to the delta's L1 norm
    torch.testing.assert_close(got[kept], delta[kept] * scale, rtol=1e-4, atol=1e-6)


def test_dare_ties_density_one_equals_ties(zoo, tmp_path):
    models = [{"model": zoo[m], "parameters": {"weight": w}} for m, w in (("lm1", 0.7), ("lm2", 0.4))]
    _, dare = _merge(tmp_path / "d", {"merge_method": "dare_ties", "base_model": zoo["base"], "models": models,
                                      "parameters": {"normalize": True}})
    _, ties = _merge(tmp_path / "t", {"merge_method": "ties", "base_model": zoo["base"], "models": models})
    _close(dare, {k: v.double() for k, v in ties.items()})


# ---------------------------------------------------------------------------------------- reward heads, recipes


def _recipe(name: str, mapping: dict[str, str], tmp_path: Path) -> Path:
    """The recipe with only its placeholder model paths rewritten."""
    text = (RECIPES / name).read_text()
    for placeholder, path in mapping.items():
        text, n = re.subn(rf"(model: ){re.escape(placeholder)}$", rf"\g<1>{path}", text, flags=re.M)
        assert n, placeholder
    return _write(tmp_path, text, name)


def test_rewardblend_recipe_end_to_end(zoo, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from bonsynth.merge import run_merge
    from bonsynth.rm.meta import RMMeta

    cfg = _recipe("rewardblend-ties.yaml", {"models/gpt2-8l": zoo["base"], "models/rm-thumbs": zoo["thumbs"],
                                            "models/rm-feedback-pairs": zoo["pairs"], "models/rm-hh-rlhf": zoo["hh"]},
                  tmp_path)
    out = tmp_path / "rewardblend"
    summary = run_merge(cfg, out)
    assert summary["reward_model"] and summary["architecture"] == "GPT2ForSequenceClassification"
    assert summary["averaged_without_base"] == ["score.weight"]

    merged = load_file(str(out / "model.safetensors"))
    th, pa, hh = _sd(zoo["thumbs"]), _sd(zoo["pairs"]), _sd(zoo["hh"])
    head = (0.5 * (th["score.weight"][1] - th["score.weight"][0]) + 0.6 * pa["score.weight"][0]
            + 0.05 * hh["score.weight"][0]) / 1.15
    torch.testing.assert_close(merged["score.weight"].double(), head.unsqueeze(0), rtol=1e-5, atol=1e-6)
    base = _sd(zoo["base"])
    for name in ("transformer.h.1.attn.c_attn.weight", "transformer.wte.weight"):
        key = name.removeprefix("transformer.")
        exp = ref_task(base["transformer." + key], [th[name], pa[name], hh[name]], [0.5, 0.6, 0.05], [1, 1, 1],
                       ties=True, normalize=True)
        torch.testing.assert_close(merged[name].double(), exp, rtol=1e-5, atol=2e-6)

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.num_labels == 1
    batch = zoo["tok"](["the quick brown fox", "hello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 1) and torch.isfinite(logits).all()
    meta = RMMeta.load(out)
    assert meta.objective == "merged" and meta.num_labels == 1
    assert [s["model"] for s in meta.extra["sources"]] == [zoo["base"], zoo["thumbs"], zoo["pairs"], zoo["hh"]]
    assert (out / "tokenizer.json").is_file()


def test_two_label_head_converts_to_logit_difference(zoo, tmp_path):
    from transformers import AutoModelForSequenceClassification

    cfg = {"merge_method": "passthrough", "models": [{"model": zoo["thumbs"]}]}
    summary, _ = _merge(tmp_path, cfg)
    assert summary["converted_heads"] == [f"{zoo['thumbs']}: score.weight"]
    orig = AutoModelForSequenceClassification.from_pretrained(zoo["thumbs"]).eval()
    conv = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    batch = zoo["tok"](["the lazy dog", "merge me now please"], return_tensors="pt", padding=True)
    with torch.no_grad():
        two, one = orig(**batch).logits, conv(**batch).logits
    torch.testing.assert_close(one[:, 0], two[:, 1] - two[:, 0], rtol=1e-5, atol=1e-5)


def test_slice_recipe_end_to_end(zoo, tmp_path):
    from bonsynth.merge import run_merge

    tok = zoo["tok"]
    gpt2 = save_model(tiny_causal_lm(tok, seed=9, n_layer=12, n_embd=16, n_head=2, n_positions=32), tok,
                      tmp_path / "gpt2")
    cfg = _recipe("gpt2-small-slice.yaml", {"models/gpt2": str(gpt2)}, tmp_path)
    summary = run_merge(cfg, tmp_path / "gpt2-8l", out_shard_size="20K")
    assert summary["num_layers"] == 8 and summary["num_shards"] > 1
    conf = json.loads((tmp_path / "gpt2-8l" / "config.json").read_text())
    assert conf["n_layer"] == 8
    index = json.loads((tmp_path / "gpt2-8l" / "model.safetensors.index.json").read_text())
    assert "transformer.h.7.mlp.c_fc.weight" in index["weight_map"]
    assert not any("h.8." in k for k in index["weight_map"])
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2-8l").config.n_layer == 8


def test_lm_head_of_base_is_left_out_and_reported(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from bonsynth.merge import run_merge

    tok = train_tokenizer(["a b c d e f g"] * 5, vocab_size=270)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                      pad_token_id=tok.pad_token_id, max_position_embeddings=32)
    torch.manual_seed(0)
    base = save_model(LlamaForCausalLM(cfg), tok, tmp_path / "base")
    rm = save_model(LlamaForSequenceClassification(LlamaConfig(**{**cfg.to_dict(), "num_labels": 1})), tok, tmp_path / "rm")
    p = _write(tmp_path, {"merge_method": "ties", "base_model": str(base),
                          "models": [{"model": str(rm), "parameters": {"weight": 1.0, "density": 0.5}}]})
    summary = run_merge(p, tmp_path / "out")
    assert summary["left_out"] == [f"{base}: lm_head.weight"]
    names = set(load_file(str(tmp_path / "out" / "model.safetensors")))
    assert "score.weight" in names and "lm_head.weight" not in names and "model.layers.1.mlp.up_proj.weight" in names


# ------------------------------------------------------------------------------------------------------ errors


def _group() -> click.Group:
    try:
        from bonsynth.cli import cli

        return cli
    except ImportError:  # other commands not there yet: the same commands under a bare group
        from bonsynth.cli.merge import merge
        from bonsynth.cli.rm import rm

        return click.Group("bonsynth", commands={"merge": merge, "rm": rm})


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["bonsynth", *args])
    code = 0
    try:
        run_guarded(_group())
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


ERROR_CASES = {
    "unknown method": ({"merge_method": "frobnicate", "models": [{"model": "{lm1}"}]}, "unknown merge_method"),
    "mergekit-only method": ({"merge_method": "della", "models": [{"model": "{lm1}"}]}, "does not implement"),
    "missing model": ({"merge_method": "linear", "models": [{"model": "{dir}/nope", "parameters": {"weight": 1}}]},
                      "model not found"),
    "shape mismatch": ({"merge_method": "linear", "models": [{"model": "{lm1}", "parameters": {"weight": 1}},
                                                           {"model": "{wide}", "parameters": {"weight": 1}}]},
                       "shape mismatch for tensor 'transformer.wpe.weight'"),
    "density above 1": ({"merge_method": "ties", "base_model": "{base}",
                         "models": [{"model": "{lm1}", "parameters": {"weight": 1, "density": 1.5}}]},
                        "density 1.5 is outside (0, 1]"),
    "density zero": ({"merge_method": "ties", "base_model": "{base}",
                      "models": [{"model": "{lm1}", "parameters": {"weight": 1, "density": 0}}]}, "outside (0, 1]"),
    "missing weight": ({"merge_method": "ties", "base_model": "{base}", "models": [{"model": "{lm1}"}]},
                       "has no 'weight' parameter"),
    "layer_range out of bounds": ({"merge_method": "passthrough",
                                   "slices": [{"sources": [{"model": "{lm1}", "layer_range": [0, 9]}]}]},
                                  "out of bounds"),
    "reward head missing from a fine-tune": ({"merge_method": "ties", "base_model": "{base}", "models": [
        {"model": "{pairs}", "parameters": {"weight": 1}}, {"model": "{lm1}", "parameters": {"weight": 1}}]},
        "cannot merge reward head 'score.weight'"),
    "unknown key": ({"merge_method": "linear", "models": [{"model": "{lm1}"}], "modules": {}}, "'modules'"),
    "slerp without base": ({"merge_method": "slerp", "parameters": {"t": 0.5},
                            "models": [{"model": "{lm1}"}, {"model": "{lm2}"}]}, "needs a base_model"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_exit_2_and_leave_nothing(zoo, tmp_path, monkeypatch, capsys, case):
    cfg, message = ERROR_CASES[case]
    text = yaml.safe_dump(cfg).replace("'", "")
    for k in ("lm1", "lm2", "base", "wide", "pairs"):
        text = text.replace("{" + k + "}", zoo[k])
    text = text.replace("{dir}", str(zoo["dir"]))
    cfg_path = _write(tmp_path, text)
    out = tmp_path / "out" / "merged"
    code, err = run_cli(["merge", str(cfg_path), str(out)], monkeypatch, capsys)
    assert code == 2, err
    assert message in err, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _pickled_passthrough(zoo, tmp_path: Path) -> Path:
    """A passthrough merge config over a copy of lm1 whose weights are a pickle `pytorch_model.bin`."""
    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(Path(zoo["lm1"], "config.json").read_text())
    torch.save(load_file(str(Path(zoo["lm1"]) / "model.safetensors")), model_dir / "pytorch_model.bin")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / f).write_text(Path(zoo["lm1"], f).read_text())
    return _write(tmp_path, {"merge_method": "passthrough", "models": [{"model": str(model_dir)}]})


def test_pickle_weights_refused_unless_opted_in(zoo, tmp_path, monkeypatch, capsys):
    cfg = _pickled_passthrough(zoo, tmp_path)
    code, err = run_cli(["merge", str(cfg), str(tmp_path / "o1")], monkeypatch, capsys)
    assert code == 2 and "pickle" in err and not (tmp_path / "o1").exists()
    code, err = run_cli(["merge", str(cfg), str(tmp_path / "o2"), "--allow-pickle"], monkeypatch, capsys)
    assert code == 0, err
    assert set(load_file(str(tmp_path / "o2" / "model.safetensors"))) == set(load_file(str(Path(zoo["lm1"]) / "model.safetensors")))


def test_existing_output_is_not_clobbered(zoo, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cfg = _write(tmp_path, {"merge_method": "passthrough", "models": [{"model": zoo["lm1"]}]})
    code, err = run_cli(["merge", str(cfg), str(out)], monkeypatch, capsys)
    assert code == 2 and "not empty" in err and (out / "keep.txt").read_text() == "mine"
    code, err = run_cli(["merge", str(cfg), str(out), "--overwrite"], monkeypatch, capsys)
    assert code == 0 and not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_hub_style_gpt2_slice_then_rewardblend(zoo, tmp_path):
    """Hub gpt2 stores bare names (`h.0...`, `wte`) plus `attn.bias` masks; RMs saved today are `transformer.*`."""
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification

    from bonsynth.merge import run_merge
    from bonsynth.rm.slice import slice_model

    hub = tmp_path / "hub-gpt2"
    hub.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (hub / f).write_text(Path(zoo["base"], f).read_text())
    sd = {k.removeprefix("transformer."): v for k, v in load_file(str(Path(zoo["base"]) / "model.safetensors")).items()}
    for i in range(SMALL["n_layer"]):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(sd, str(hub / "model.safetensors"))

    info = slice_model(str(hub), "0:3", tmp_path / "base")
    assert len(info["legacy_buffers_left_out"]) == 2 * SMALL["n_layer"]
    assert not any(k.endswith((".attn.bias", ".attn.masked_bias")) for k in load_file(str(tmp_path / "base" / "model.safetensors")))
    cfg = _recipe("rewardblend-ties.yaml", {"models/gpt2-8l": str(tmp_path / "base"), "models/rm-thumbs": zoo["thumbs"],
                                            "models/rm-feedback-pairs": zoo["pairs"], "models/rm-hh-rlhf": zoo["hh"]},
                  tmp_path)
    run_merge(cfg, tmp_path / "rm")
    merged = load_file(str(tmp_path / "rm" / "model.safetensors"))
    base = _sd(zoo["base"])
    th, pa, hh = _sd(zoo["thumbs"]), _sd(zoo["pairs"]), _sd(zoo["hh"])
    name = "transformer.h.2.mlp.c_proj.weight"
    exp = ref_task(base[name], [th[name], pa[name], hh[name]], [0.5, 0.6, 0.05], [1, 1, 1], ties=True, normalize=True)
    torch.testing.assert_close(merged[name].double(), exp, rtol=1e-5, atol=2e-6)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert model.config.num_labels == 1


def test_topk_mask_is_exact_k_with_ties():
    from bonsynth.merge.methods import topk_mask

    d = torch.tensor([1.0, -1.0, 1.0, 0.5, -2.0, 1.0])
    assert topk_mask(d, 0.5).tolist() == [True, True, False, False, True, False]  # k=3: |-2|, then ties by index
    assert topk_mask(d, 0.01).tolist() == [False, False, False, False, True, False]  # at least one kept
    assert topk_mask(torch.zeros(10), 0.3).sum() == 3
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(topk_mask(x, 0.37), ref_topk(x.double(), 0.37) != 0)


def test_bert_family_reward_merge(tmp_path):
    """A BertForMaskedLM base (no pooler, an MLM head) with 1- and 2-label BertForSequenceClassification fine-tunes."""
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
    )

    from bonsynth.merge import run_merge

    tok = train_tokenizer(["a b c d e f g"] * 5, vocab_size=270)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    base = save_model(BertForMaskedLM(cfg), tok, tmp_path / "base")
    two = save_model(BertForSequenceClassification(BertConfig(**{**cfg.to_dict(), "num_labels": 2})), tok, tmp_path / "two")
    one = save_model(BertForSequenceClassification(BertConfig(**{**cfg.to_dict(), "num_labels": 1})), tok, tmp_path / "one")
    p = _write(tmp_path, {"merge_method": "dare_ties", "base_model": str(base), "models": [
        {"model": str(two), "parameters": {"weight": 0.4, "density": 0.7}},
        {"model": str(one), "parameters": {"weight": 0.6, "density": 0.7}}]})
    summary = run_merge(p, tmp_path / "out", random_seed=1)
    assert set(summary["averaged_without_base"]) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                                     "classifier.weight", "classifier.bias"}
    assert all(x.startswith(f"{base}: cls.predictions.") for x in summary["left_out"]) and summary["left_out"]
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    t2, t1 = _sd(str(two)), _sd(str(one))
    bias = (0.4 * (t2["classifier.bias"][1] - t2["classifier.bias"][0]) + 0.6 * t1["classifier.bias"][0]) / 1.0
    torch.testing.assert_close(out["classifier.bias"].double(), bias.reshape(1), rtol=1e-5, atol=1e-6)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        logits = model(**tok(["a b c"], return_tensors="pt")).logits
    assert logits.shape == (1, 1) and torch.isfinite(logits).all()


def test_out_dtype_and_dtype_override(zoo, tmp_path):
    cfg = {"merge_method": "linear", "out_dtype": "bfloat16", "dtype": "float32",
           "models": [{"model": zoo["lm1"], "parameters": {"weight": 1}}, {"model": zoo["lm2"], "parameters": {"weight": 1}}]}
    summary, out = _merge(tmp_path, cfg, dtype="float16")
    assert summary["dtype"] == "bfloat16" and all(t.dtype == torch.bfloat16 for t in out.values())
    a, b = _sd(zoo["lm1"]), _sd(zoo["lm2"])
    name = "transformer.h.0.mlp.c_fc.weight"
    expected = ((a[name].half().double() + b[name].half().double()) / 2).to(torch.bfloat16)  # inputs rounded to fp16
    assert torch.equal(out[name], expected)


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_dare_matches_reference_given_the_mask(zoo, tmp_path, monkeypatch, method):
    """With the random drop replaced by a fixed mask, the rest of DARE (L1 rescale, consensus, sum) is checked."""
    import bonsynth.merge.methods as M

    def fixed(delta, density, generator):
        return (torch.arange(delta.numel()) % 5 != 0).reshape(delta.shape)

    monkeypatch.setattr(M, "bernoulli_mask", fixed)
    ws = [0.7, 0.4]
    cfg = {"merge_method": method, "base_model": zoo["base"], "parameters": {"lambda": 0.9},
           "models": [{"model": zoo[m], "parameters": {"weight": w, "density": 0.8}} for m, w in zip(("lm1", "lm2"), ws, strict=True)]}
    _, out = _merge(tmp_path, cfg)
    b = _sd(zoo["base"])
    sds = [_sd(zoo[m]) for m in ("lm1", "lm2")]
    expected = {}
    for k, base in b.items():
        keep = (torch.arange(base.numel()) % 5 != 0).reshape(base.shape).double()
        deltas = []
        for s, w in zip(sds, ws, strict=True):
            d = s[k] - base
            kept = d * keep
            scale = d.abs().sum() / kept.abs().sum() if kept.abs().sum() >= 1e-7 and d.abs().sum() >= 1e-7 else 1.0
            deltas.append(w * kept * scale)
        if method == "dare_ties":
            majority = torch.where(sum(deltas) >= 0, 1.0, -1.0).double()
            mixed = sum(d * (torch.sign(d) == majority) for d in deltas)
        else:
            mixed = sum(deltas)
        expected[k] = base + 0.9 * mixed  # normalize is off by default for both
    _close(out, expected)


def test_python_dash_m_cli_exit_code(tmp_path):
    """The real entry point: `python -m bonsynth.cli merge ...` exits 2 with one line and leaves nothing."""
    import subprocess

    cfg = _write(tmp_path, {"merge_method": "ties", "models": [{"model": str(tmp_path / "missing")}]})
    res = subprocess.run([sys.executable, "-m", "bonsynth.cli", "merge", str(cfg), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_internal_error_exits_1_asking_for_a_report(zoo, tmp_path, monkeypatch, capsys):
    """A broken invariant of bonsynth's own (a method returning the wrong shape) is a bug, not a user error."""
    from bonsynth.merge.methods import get_method

    monkeypatch.setattr(get_method("linear"), "merge", lambda group: torch.zeros(1))
    cfg = _write(tmp_path, {"merge_method": "linear", "models": [{"model": zoo["lm1"], "parameters": {"weight": 1}},
                                                               {"model": zoo["lm2"], "parameters": {"weight": 1}}]})
    out = tmp_path / "out" / "merged"
    code, err = run_cli(["merge", str(cfg), str(out)], monkeypatch, capsys)
    assert code == 1, err
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.fullmatch(r"error: internal: merged '.+' has shape \(1,\), expected \(.+\) \(this is a bug in bonsynth, "
                        r"not in your input; please report it with the command you ran\)", errors[0]), errors[0]
    assert not out.exists()


def test_user_errors_still_exit_2_and_internal_ones_1(monkeypatch, capsys):
    from bonsynth.errors import BonsynthError, ConfigError, InternalError

    for exc, code, text in [(ConfigError("bad key"), 2, "error: bad key"),
                            (BonsynthError("no model"), 2, "error: no model"),
                            (InternalError("x != y"), 1, "error: internal: x != y (this is a bug in bonsynth")]:
        @click.command("boom")
        def boom(exc=exc):
            raise exc

        monkeypatch.setattr(sys, "argv", ["bonsynth", "boom"])
        with pytest.raises(SystemExit) as e:
            run_guarded(click.Group("bonsynth", commands={"boom": boom}))
        err = capsys.readouterr().err
        assert e.value.code == code and err.startswith(text) and len(err.splitlines()) == 1, err


def test_allow_unsafe_weights_is_merges_opt_in_too(zoo, tmp_path, monkeypatch, capsys):
    """One name for the pickle opt-in: `--allow-unsafe-weights`; `--allow-pickle` still works, deprecated and hidden."""
    cfg = _pickled_passthrough(zoo, tmp_path)
    code, err = run_cli(["merge", str(cfg), str(tmp_path / "o1")], monkeypatch, capsys)
    assert code == 2 and "opt in with --allow-unsafe-weights" in err and not (tmp_path / "o1").exists()
    code, err = run_cli(["merge", str(cfg), str(tmp_path / "o2"), "--allow-unsafe-weights"], monkeypatch, capsys)
    assert code == 0 and "deprecated" not in err, err
    code, err = run_cli(["merge", str(cfg), str(tmp_path / "o3"), "--allow-pickle"], monkeypatch, capsys)
    assert code == 0 and "note: --allow-pickle is deprecated; use --allow-unsafe-weights" in err, err
    from click.testing import CliRunner

    from bonsynth.cli.merge import merge

    shown = CliRunner().invoke(merge, ["--help"]).output
    assert "--allow-unsafe-weights" in shown and "--allow-pickle" not in shown

    from bonsynth.merge import run_merge

    with pytest.warns(DeprecationWarning, match="allow_unsafe_weights"):
        run_merge(cfg, tmp_path / "o4", allow_pickle=True)
    assert (tmp_path / "o4" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------- one options object


def test_merge_options_object_equals_the_keywords_and_unknown_ones_are_refused(zoo, tmp_path):
    """One `MergeOptions` behind `run_merge`, `merge_config` and the CLI: the object and its fields as keywords
    give the same output; a misspelt or removed option (the dead `trust_remote_code`) is a TypeError, not ignored."""
    from bonsynth.merge import MergeOptions, run_merge

    cfg = _write(tmp_path, {"merge_method": "dare_linear", "models": [
        {"model": zoo["lm1"], "parameters": {"weight": 0.5, "density": 0.5}},
        {"model": zoo["lm2"], "parameters": {"weight": 0.5, "density": 0.5}}], "base_model": zoo["base"]})
    a = run_merge(cfg, tmp_path / "a", MergeOptions(random_seed=3, out_shard_size="20K"))
    b = run_merge(cfg, tmp_path / "b", random_seed=3, out_shard_size="20K")
    assert a["num_shards"] > 1 and a["random_seed"] == 3
    assert {k: v for k, v in a.items() if k != "out"} == {k: v for k, v in b.items() if k != "out"}
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    # keywords override the object's fields
    c = run_merge(cfg, tmp_path / "c", MergeOptions(random_seed=3), random_seed=4)
    assert c["random_seed"] == 4
    for bad in ("trust_remote_code", "shard_size"):
        with pytest.raises(TypeError, match=bad):
            run_merge(cfg, tmp_path / "d", **{bad: True})
    assert not (tmp_path / "d").exists()


def test_merge_cli_still_takes_the_hidden_no_op_trust_remote_code_flag(zoo, tmp_path, monkeypatch, capsys):
    from click.testing import CliRunner

    from bonsynth.cli.merge import merge

    cfg = _write(tmp_path, {"merge_method": "passthrough", "models": [{"model": zoo["lm1"]}]})
    code, err = run_cli(["merge", str(cfg), str(tmp_path / "o"), "--trust-remote-code"], monkeypatch, capsys)
    assert code == 0, err
    assert "--trust-remote-code" not in CliRunner().invoke(merge, ["--help"]).output


def test_a_named_tokenizer_source_without_files_is_refused_before_any_output(zoo, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "notok"
    empty.mkdir()
    (empty / "config.json").write_text(Path(zoo["lm1"], "config.json").read_text())
    (empty / "model.safetensors").write_bytes(Path(zoo["lm1"], "model.safetensors").read_bytes())
    cfg = _write(tmp_path, {"merge_method": "passthrough", "models": [{"model": zoo["lm1"]}],
                            "tokenizer_source": str(empty)})
    code, err = run_cli(["merge", str(cfg), str(tmp_path / "o")], monkeypatch, capsys)
    assert code == 2 and f"no tokenizer files in {empty}" in err and not (tmp_path / "o").exists()
    cfg = _write(tmp_path, {"merge_method": "passthrough", "models": [{"model": str(empty)}]}, "m2.yml")
    code, err = run_cli(["merge", str(cfg), str(tmp_path / "o2")], monkeypatch, capsys)
    assert code == 0 and "the output has no tokenizer" in err, err
