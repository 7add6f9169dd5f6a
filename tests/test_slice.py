"""`bonsynth rm slice`: a passthrough merge that keeps layers START:END; checked against running them by hand."""

from __future__ import annotations

import json
import sys

import click
import pytest
import torch
from safetensors.torch import load_file

from bonsynth.cli.common import run_guarded
from bonsynth.demo.models import save_model, tiny_causal_lm, train_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["slice me from layer one to layer three", "the quick brown fox"] * 10, vocab_size=280)


def _ids(tok):
    return tok(["the quick brown fox slice"], return_tensors="pt")["input_ids"]


def _out(x):
    return x[0] if isinstance(x, tuple) else x


def _check_kept_weights(orig_dir, out_dir, container: str, start: int, end: int) -> None:
    """Every kept layer tensor is bit-identical to the original layer it came from; nothing else is lost."""
    orig = load_file(str(orig_dir / "model.safetensors"))
    new = load_file(str(out_dir / "model.safetensors"))
    expected = {}
    for name, t in orig.items():
        if f"{container}." in name:
            idx = int(name.split(f"{container}.", 1)[1].split(".", 1)[0])
            if start <= idx < end:
                rest = name.split(f"{container}.{idx}.", 1)[1]
                expected[name.split(f"{container}.", 1)[0] + f"{container}.{idx - start}.{rest}"] = t
        else:
            expected[name] = t
    assert set(new) == set(expected)
    for k, v in expected.items():
        assert torch.equal(new[k], v), k


def test_gpt2_slice_matches_layers_by_hand(tok, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bonsynth.rm.slice import slice_model

    base = save_model(tiny_causal_lm(tok, seed=1, n_layer=4, n_embd=32, n_head=2, n_positions=64), tok, tmp_path / "b")
    info = slice_model(str(base), "1:3", tmp_path / "s")
    assert info["num_layers"] == 2
    _check_kept_weights(base, tmp_path / "s", "transformer.h", 1, 3)
    assert json.loads((tmp_path / "s" / "config.json").read_text())["n_layer"] == 2
    assert AutoTokenizer.from_pretrained(tmp_path / "s")("hi")["input_ids"] == tok("hi")["input_ids"]

    orig = AutoModelForCausalLM.from_pretrained(base).eval()
    sliced = AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
    assert info["num_parameters"] == sum(p.numel() for p in sliced.parameters())
    ids = _ids(tok)
    with torch.no_grad():
        tr = orig.transformer
        h = tr.wte(ids) + tr.wpe(torch.arange(ids.shape[1]).unsqueeze(0))
        for block in tr.h[1:3]:
            h = _out(block(h))
        expected = orig.lm_head(tr.ln_f(h))
        got = sliced(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_llama_slice_matches_layers_by_hand(tok, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from bonsynth.rm.slice import slice_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    base = save_model(LlamaForCausalLM(cfg), tok, tmp_path / "b")
    info = slice_model(str(base), "0:2", tmp_path / "s")
    assert info["num_layers"] == 2
    _check_kept_weights(base, tmp_path / "s", "model.layers", 0, 2)
    orig = LlamaForCausalLM.from_pretrained(base).eval()
    sliced = LlamaForCausalLM.from_pretrained(tmp_path / "s").eval()
    assert sliced.config.num_hidden_layers == 2
    ids = _ids(tok)
    with torch.no_grad():
        m = orig.model
        h = m.embed_tokens(ids)
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        pe = m.rotary_emb(h, pos)
        for layer in m.layers[0:2]:
            h = _out(layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe))
        expected = orig.lm_head(m.norm(h))
        got = sliced(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bert_slice_matches_layers_by_hand(tok, tmp_path):
    from transformers import BertConfig, BertModel

    from bonsynth.rm.slice import slice_model

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                     num_attention_heads=2, max_position_embeddings=64)
    base = save_model(BertModel(cfg), tok, tmp_path / "b")  # a bare encoder: names carry no `bert.` prefix
    slice_model(str(base), "1:3", tmp_path / "s")
    _check_kept_weights(base, tmp_path / "s", "encoder.layer", 1, 3)
    orig = BertModel.from_pretrained(base).eval()
    sliced = BertModel.from_pretrained(tmp_path / "s").eval()
    ids = _ids(tok)
    with torch.no_grad():
        h = orig.embeddings(input_ids=ids)
        for layer in orig.encoder.layer[1:3]:
            h = _out(layer(h))
        got = sliced(ids).last_hidden_state
    torch.testing.assert_close(got, h, rtol=1e-5, atol=1e-5)


def test_per_layer_config_lists_are_sliced(tok, tmp_path):
    from transformers import AutoConfig, Qwen2Config, Qwen2ForCausalLM

    from bonsynth.rm.slice import slice_model

    types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=1, layer_types=types, use_sliding_window=True,
                      sliding_window=8, max_position_embeddings=64)
    base = save_model(Qwen2ForCausalLM(cfg), tok, tmp_path / "b")
    slice_model(str(base), "1:4", tmp_path / "s")
    out = AutoConfig.from_pretrained(tmp_path / "s")
    assert out.num_hidden_layers == 3 and list(out.layer_types) == types[1:4]


def test_gpt2_small_8_of_12_layers_is_about_96m():
    """The seed's base model, by arithmetic on gpt2's real shapes (no download): 8 of 12 layers ~ 96M."""
    from transformers import GPT2Config

    c = GPT2Config(n_layer=12)
    e = c.n_embd
    per_layer = 2 * 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * 4 * e + 4 * e) + (4 * e * e + e)
    total = c.vocab_size * e + c.n_positions * e + 8 * per_layer + 2 * e
    assert 95.5e6 < total < 96.5e6
    with torch.device("meta"):
        from transformers import GPT2Model

        full = sum(p.numel() for p in GPT2Model(c).parameters())
    assert full - 4 * per_layer == total


def _group() -> click.Group:
    from bonsynth.cli.rm import rm

    return click.Group("bonsynth", commands={"rm": rm})


@pytest.mark.parametrize(("layers", "message"), [("0:9", "out of bounds"), ("8", "START:END"), ("3:1", "greater")])
def test_slice_errors_exit_2(tok, tmp_path, monkeypatch, capsys, layers, message):
    base = save_model(tiny_causal_lm(tok, seed=1, n_layer=2, n_embd=16, n_head=2, n_positions=32), tok, tmp_path / "b")
    monkeypatch.setattr(sys, "argv", ["bonsynth", "rm", "slice", "--base", str(base), "--layers", layers,
                                      "--out", str(tmp_path / "s")])
    with pytest.raises(SystemExit) as e:
        run_guarded(_group())
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def _slice_cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["bonsynth", "rm", "slice", *args])
    try:
        run_guarded(_group())
    except SystemExit as e:
        return e.code
    return 0


def test_slice_refuses_a_non_empty_out_unless_overwrite(tok, tmp_path, monkeypatch, capsys):
    """A rerun (a benchmark, a script) must not silently mix two models' files: refuse, or replace whole."""
    base = save_model(tiny_causal_lm(tok, seed=1, n_layer=3, n_embd=16, n_head=2, n_positions=32), tok, tmp_path / "b")
    out = tmp_path / "s"
    assert _slice_cli(monkeypatch, "--base", str(base), "--layers", "0:2", "--out", str(out)) == 0
    assert json.loads((out / "config.json").read_text())["n_layer"] == 2
    capsys.readouterr()
    assert _slice_cli(monkeypatch, "--base", str(base), "--layers", "0:1", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert json.loads((out / "config.json").read_text())["n_layer"] == 2  # untouched
    assert _slice_cli(monkeypatch, "--base", str(base), "--layers", "0:1", "--out", str(out), "--overwrite") == 0
    assert json.loads((out / "config.json").read_text())["n_layer"] == 1
    _check_kept_weights(base, out, "h", 0, 1)
