"""`bonsynth loop` on tiny models: recipes, rounds that learn, kill/resume, metrics, errors.

The learnable setup: a 2-layer GPT-2 policy pre-trained for a few steps to babble short sentences of the
test vocabulary, and a reward model whose weights are set by hand so that its reward is a known function: a
monotone function of the share of "target word" tokens (gold, star, sea, ...) in the scored text. Best-of-N
then prefers replies with more target words, and SFT on them should make the policy say them more often.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import WORDS, config_in_generation_child, pickle_copy, sigkill_when, write_jsonl

TARGET_WORDS = ("gold", "star", "sea", "coffee", "map", "sword")
# Tiny models train and sample many times faster on one thread (and a shared CPU does not thrash); loops started
# in a child process get the same setting, so in-process and child runs compute the very same numbers.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads cost more than they save


# ---------------------------------------------------------------------------------------------------- fixtures


def _pretrain_policy(tokenizer, out: Path, seed: int = 0) -> Path:
    """A few epochs of LM training on short random sentences: the policy says words, then stops."""
    import torch

    from bonsynth.demo.models import save_model, tiny_causal_lm

    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) for _ in range(400)]
    model = tiny_causal_lm(tokenizer, seed=seed, n_layer=2, n_embd=64, n_head=2, n_positions=128)
    examples = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(3):
        order = torch.randperm(len(examples), generator=g).tolist()
        for i in range(0, len(order), 32):
            batch = [examples[j] for j in order[i : i + 32]]
            width = max(map(len, batch))
            ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in batch])
            labels = torch.tensor([x + [-100] * (width - len(x)) for x in batch])
            model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    return save_model(model, tokenizer, out)


def target_token_ids(tokenizer) -> list[int]:
    return [i for t, i in tokenizer.get_vocab().items() if tokenizer.convert_tokens_to_string([t]).strip() in TARGET_WORDS]


def _share_rm(tokenizer, out: Path) -> Path:
    """A real GPT-2 reward model whose reward rises with the share of target-word tokens in the text.

    Embedding dim 0 is +1 for a target token and -1 otherwise (dim 1 the opposite, so every token has the same
    layer-norm statistics). Layer 0's attention has zero queries and keys, so it averages over all positions;
    its value/output read dim 0 and write 0.5 * (2 * share - 1) into dim 2. Every MLP and layer 1 are zero
    (identity through the residual), and the score head reads dim 2 after the final layer norm, which is
    strictly increasing in it. So: reward = f(share of target tokens), f strictly increasing.
    """
    import torch

    from bonsynth.demo.models import save_model, tiny_reward_model
    from bonsynth.rm.meta import RMMeta

    model = tiny_reward_model(tokenizer, num_labels=1, seed=0, n_layer=2, n_embd=64, n_head=2, n_positions=128)
    dim = model.config.n_embd
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        tr = model.transformer
        sign = -torch.ones(len(tokenizer))
        sign[target_token_ids(tokenizer)] = 1.0
        tr.wte.weight[:, 0] = sign
        tr.wte.weight[:, 1] = -sign
        for block in tr.h:
            block.ln_1.weight.fill_(1.0)
            block.ln_2.weight.fill_(1.0)
        tr.ln_f.weight.fill_(1.0)
        tr.h[0].attn.c_attn.weight[0, 2 * dim] = 1.0  # value head reads dim 0 (after ln_1: +-sqrt(dim / 2))
        tr.h[0].attn.c_proj.weight[0, 2] = 0.5 / math.sqrt(dim / 2)
        model.score.weight[0, 2] = 1.0
    save_model(model, tokenizer, out)
    RMMeta(objective="pairwise", reward_mean=-2.0, reward_std=0.5).save(out)
    return out


@pytest.fixture(scope="module")
def learnable(tmp_path_factory, tiny_tokenizer) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("learnable")
    rng = random.Random(1)
    prompts = write_jsonl(root / "prompts.jsonl", [
        {"id": f"p{i:03d}", "prompt": " ".join(rng.choice(WORDS) for _ in range(3))} for i in range(120)
    ])
    return SimpleNamespace(
        policy=_pretrain_policy(tiny_tokenizer, root / "policy"),
        rm=_share_rm(tiny_tokenizer, root / "rm"),
        prompts=prompts,
        tokenizer=tiny_tokenizer,
    )


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_recipe(path: Path, m: SimpleNamespace, out: Path, **over) -> Path:
    recipe = {
        "out": str(out),
        "seed": 0,
        "policy": str(m.policy),
        "rewards": [str(m.rm)],
        "prompts": [str(m.prompts)],
        "rounds": 3,
        "prompts_per_round": 32,
        "device": "cpu",
        "generation": {"n": 8, "max_new_tokens": 16, "backend": "hf", "batch_size": 8},
        "selection": {"select": "best"},
        "update": {"method": "sft", "epochs": 3, "lr": 2.0e-3, "batch_size": 8, "max_length": 64},
        "eval": {"num_prompts": 16, "n": 8},
    }
    path.write_text(yaml.safe_dump(_merge(recipe, over), sort_keys=False), encoding="utf-8")
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------- unit checks


def test_share_rm_is_a_known_function_of_target_words(learnable):
    from bonsynth.rm.model import RewardModel

    rm = RewardModel.load(str(learnable.rm), device="cpu")
    prompt = "tell me about"
    replies = [" the night rain", " the gold rain", " gold gold rain", " gold star sea", " gold star sea map coffee"]
    rewards = rm.score([(prompt, r) for r in replies])
    assert all(a < b for a, b in zip(rewards, rewards[1:], strict=False)), rewards
    # Only the share counts: the same words in another order get the same reward.
    again = rm.score([(prompt, " rain the gold"), (prompt, " sea gold star")])
    assert again == pytest.approx([rewards[1], rewards[3]], abs=1e-5)


def test_round_prompts_are_fresh_until_the_pool_is_used_up():
    from bonsynth.data.records import PromptRecord
    from bonsynth.loop.sources import round_prompts

    pool = [PromptRecord(id=f"q{i}", prompt=f"prompt {i}") for i in range(10)]
    rounds = [[p.id for p in round_prompts(pool, 4, seed=3, round_index=r)] for r in range(5)]
    assert all(len(r) == 4 for r in rounds)
    first_pass = rounds[0] + rounds[1] + rounds[2][:2]
    assert sorted(first_pass) == sorted(p.id for p in pool)  # no repeat before every prompt was used
    assert rounds == [[p.id for p in round_prompts(pool, 4, seed=3, round_index=r)] for r in range(5)]
    assert rounds[0] != [p.id for p in round_prompts(pool, 4, seed=4, round_index=0)]
    assert [p.id for p in round_prompts(pool, "all", seed=3, round_index=2)] == [p.id for p in pool]


def test_eval_metrics_percentiles_bon_gain_and_paired_win_rate(tmp_path):
    from bonsynth.loop.metrics import eval_metrics

    def cands(rewards_by_prompt):
        return [{"id": f"e{i}", "candidates": [
            {"index": j, "text": f"w{i} w{j} x", "reward": r, "num_tokens": 3 + j, "finish_reason": "stop"}
            for j, r in enumerate(rs)]} for i, rs in enumerate(rewards_by_prompt)]

    prev = write_jsonl(tmp_path / "prev.jsonl", cands([[0.0, 1.0], [2.0, 3.0]]))
    cur = write_jsonl(tmp_path / "cur.jsonl", cands([[0.5, 1.0], [1.0, 4.0]]))
    m = eval_metrics(cur, prev)
    assert m["reward_mean"] == pytest.approx(1.625)
    assert m["reward_median"] == pytest.approx(1.0)
    assert m["reward_p90"] == pytest.approx(3.1)  # numpy's linear interpolation: 1.0 + 0.7 * (4.0 - 1.0)
    assert m["bon_gain"] == pytest.approx((1.0 + 4.0) / 2 - 1.625)
    assert m["win_rate_vs_previous"] == pytest.approx((2 + 0.5) / 4)  # win, tie, loss, win
    assert m["win_rate_counts"] == {"wins": 2, "ties": 1, "losses": 1}
    assert m["length_mean"] == pytest.approx(3.5) and m["num_samples"] == 4
    assert eval_metrics(cur)["win_rate_vs_previous"] is None


def test_generation_subprocess_runs_the_same_config(monkeypatch, tmp_path):
    """The vLLM path runs each generation in a child: it must run the very same (resumable) config."""
    from bonsynth.generate.pipeline import GenerateConfig

    cfg = GenerateConfig(
        policy="/m/policy", rewards=["/m/rm1", "/m/rm2"], reward_weights=[0.7, 0.3], prompts="/d/p.jsonl",
        out=str(tmp_path / "o"), n=6, backend="vllm", temperature=0.7, top_p=0.95, max_new_tokens=99, seed=123,
        stop=["\n\nHuman:", "###"], long_prompts="skip", reward_engine="vllm", select="top-k:2", write_pairs=True,
        min_reward=-1.5, min_margin=0.25, dedup=True,
        length_normalize=True, batch_size=17, resume=True, device="cpu", dtype="float32",
        backend_options={"tensor_parallel_size": 2, "gpu_memory_utilization": 0.5}, show_progress=False,
    )
    got = config_in_generation_child(monkeypatch, cfg)
    assert got == cfg and got.fingerprint() == cfg.fingerprint()
    assert got.resume and not got.show_progress and got.backend_options == cfg.backend_options


def test_training_rows_render_like_generation(tiny_tokenizer):
    """TRL must train on the text generation produced: plain fallback strings, or the tokenizer's own template."""
    import copy

    from bonsynth.data.chat import render_prompt, render_response
    from bonsynth.loop.train_policy import to_trl_row

    chat = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "hello"}]
    row = to_trl_row(chat, {"completion": "Ahoy there"}, tiny_tokenizer)  # no chat template: plain fallback
    assert row["prompt"] == render_prompt(chat, tiny_tokenizer) == "\n\nSystem: You are a pirate.\n\nHuman: hello\n\nAssistant:"
    assert row["completion"] == render_response(chat, "Ahoy there", tiny_tokenizer) == " Ahoy there"
    assert to_trl_row("tell me", {"chosen": " a", "rejected": " b"}, tiny_tokenizer) == \
        {"prompt": "tell me", "chosen": " a", "rejected": " b"}
    templated = copy.deepcopy(tiny_tokenizer)
    templated.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}" \
                              "{% if add_generation_prompt %}<assistant>{% endif %}"
    row = to_trl_row(chat, {"completion": "Ahoy"}, templated)  # TRL applies the same template generation used
    assert row == {"prompt": chat, "completion": [{"role": "assistant", "content": "Ahoy"}]}


# ---------------------------------------------------------------------------------------------------- errors


def _loop_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from bonsynth.cli import cli
    from bonsynth.cli.common import run_guarded

    monkeypatch.setattr(sys, "argv", ["bonsynth", "loop", *args])
    with pytest.raises(SystemExit) as info:
        run_guarded(cli)
    return info.value.code, capsys.readouterr().err


def test_bad_recipes_fail_with_one_clear_line_and_exit_2(tmp_path, monkeypatch, capsys, tiny_policy_dir, tiny_rm_dir,
                                                          prompts_file):
    m = SimpleNamespace(policy=tiny_policy_dir, rm=tiny_rm_dir, prompts=prompts_file)
    out = tmp_path / "never"
    cases = [
        ({"generaton": {"n": 4}}, ["unknown key 'generaton'", "did you mean 'generation'"]),
        ({"update": {"method": "sft", "learnig_rate": 1e-5}}, ["unknown key 'update.learnig_rate'"]),
        ({"update": {"method": "ppo"}}, ["update.method", "unknown update step 'ppo'", "sft, dpo"]),
        ({"prompts": [str(tmp_path / "missing.jsonl")]}, ["prompts:", "missing.jsonl", "does not exist"]),
        ({"rewards": [str(tmp_path / "no-rm")]}, ["rewards[0]", "no-rm", "not found"]),
        ({"policy": str(tmp_path / "no-policy")}, ["policy:", "no-policy", "not found"]),
        ({"rounds": 0}, ["rounds", "greater than or equal to 1"]),
        ({"selection": {"select": "worst"}}, ["selection.select", "unknown selection 'worst'"]),
        ({"prompts_per_round": 500, "eval": {"num_prompts": 4}}, ["prompts_per_round", "more than the 8"]),
        ({"rm_update": {"epochs": 1}}, ["missing required key 'rm_update.labeler'"]),
    ]
    for i, (over, needles) in enumerate(cases):
        recipe = write_recipe(tmp_path / f"r{i}.yaml", m, out, **over)
        code, err = _loop_cli(monkeypatch, capsys, str(recipe))
        assert code == 2, (over, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert str(recipe) in err, err
        for needle in needles:
            assert needle in err, (needle, err)
        assert not out.exists()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("out: x\nrounds: 2\n  method: sft\n", encoding="utf-8")
    code, err = _loop_cli(monkeypatch, capsys, str(bad_yaml))
    assert code == 2 and "bad.yaml:3: mapping values are not allowed here" in err, err
    code, err = _loop_cli(monkeypatch, capsys, str(tmp_path / "nope.yaml"))
    assert code == 2 and "recipe not found" in err
    code, err = _loop_cli(monkeypatch, capsys, str(write_recipe(tmp_path / "ok.yaml", m, out)), "--rounds", "0")
    assert code == 2 and "--rounds" in err and not out.exists()

    # And end to end through the installed entry point: exit status 2, one line, no traceback.
    recipe = write_recipe(tmp_path / "cli.yaml", m, out, update={"method": "ppo"})
    r = subprocess.run([sys.executable, "-m", "bonsynth", "loop", str(recipe)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "unknown update step 'ppo'" in r.stderr and "Traceback" not in r.stderr


def test_shipped_recipes_validate():
    from bonsynth.loop import load_recipe

    repo = Path(__file__).resolve().parents[1]
    for name, method in (("quickstart", "sft"), ("raft-sft", "sft"), ("iterative-dpo", "dpo")):
        recipe = load_recipe(repo / "recipes" / f"{name}.yaml")
        assert recipe.update.method == method and recipe.rounds >= 2
    assert load_recipe(repo / "recipes" / "iterative-dpo.yaml").update.lora is not None
    unnatural = load_recipe(repo / "recipes" / "unnatural-bon.yaml")
    assert unnatural.rounds == 3 and unnatural.prompt_synth.per_round >= 1 and unnatural.eval.judge
    assert not unnatural.prompt_files and unnatural.eval.prompts  # every training prompt is synthetic


# ---------------------------------------------------------------------------------------------------- loading options

_MINIMAL = {"out": "runs/x", "policy": "demo:policy", "rewards": ["demo:rm"], "prompts": ["demo:data/prompts.jsonl"],
            "rounds": 2, "update": {"method": "sft"}}
_FULL = dict(_MINIMAL, seed=3, dtype="float32", generation={"n": 8, "backend": "hf", "temperature": 0.7, "batch_size": 16},
             selection={"select": "pairs", "min_margin": 0.5}, update={"method": "dpo", "lora": {"r": 4}},
             rm_update={"labeler": "demo:rm"}, eval={"num_prompts": 8})
# Fingerprints taken before the loading/generation options existed: a loop started then must still resume.
_PINNED = {"minimal": "49f69f1022af6b5a", "full": "ce7838441d162505", "quickstart": "c58259fb69e9d7e3",
           "raft-sft": "4d8757b8e76b73f1", "iterative-dpo": "23d7c0f34f34221b"}


def test_recipe_loading_and_generation_keys_validate(tmp_path):
    from bonsynth.errors import ConfigError
    from bonsynth.loop.recipe import load_recipe, parse_recipe

    r = parse_recipe(_merge(_MINIMAL, {"trust_remote_code": True, "allow_unsafe_weights": True, "generation": {
        "backend": "vllm", "prefix_sharing": "on", "reward_dtype": "bf16", "max_model_len": 512, "enforce_eager": True}}))
    g = r.generation
    assert r.trust_remote_code and r.allow_unsafe_weights
    assert (g.prefix_sharing, g.reward_dtype, g.max_model_len, g.enforce_eager) == ("on", "bf16", 512, True)
    d = parse_recipe(_MINIMAL)
    assert not d.trust_remote_code and not d.allow_unsafe_weights and d.generation.prefix_sharing == "auto"
    assert (d.generation.reward_dtype, d.generation.max_model_len, d.generation.enforce_eager) == (None, None, False)
    # YAML reads a bare off/on as a boolean: it still means the mode.
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_MINIMAL) + "generation:\n  prefix_sharing: off\n", encoding="utf-8")
    assert load_recipe(path).generation.prefix_sharing == "off"

    cases = [
        ({"generation": {"prefix_sharing": "sometimes"}}, ["generation.prefix_sharing", "'auto', 'on' or 'off'"]),
        ({"generation": {"reward_dtype": "int8"}}, ["generation.reward_dtype", "unknown dtype 'int8'"]),
        ({"generation": {"max_model_len": 0}}, ["generation.max_model_len", "greater than or equal to 1"]),
        ({"generation": {"enforce_eager": "maybe"}}, ["generation.enforce_eager", "boolean"]),
        ({"allow_unsafe_weights": "maybe"}, ["allow_unsafe_weights", "boolean"]),
        ({"trust_remote_code": [1]}, ["trust_remote_code", "boolean"]),
        ({"allow_unsafe_weight": True}, ["unknown key 'allow_unsafe_weight'", "did you mean 'allow_unsafe_weights'"]),
        ({"generation": {"backend": "hf", "max_model_len": 64}}, ["generation:", "max_model_len only apply to the vllm"]),
        ({"generation": {"backend": "hf", "enforce_eager": True}}, ["enforce_eager only apply to the vllm backend"]),
    ]
    for over, needles in cases:
        with pytest.raises(ConfigError) as info:
            parse_recipe(_merge(_MINIMAL, over), source="r.yaml")
        msg = str(info.value)
        assert msg.startswith("r.yaml: ") and "\n" not in msg, msg
        for needle in needles:
            assert needle in msg, (needle, msg)


def test_vllm_only_keys_with_auto_backend_fail_up_front_when_it_resolves_to_hf(tmp_path, monkeypatch, capsys,
                                                                               tiny_policy_dir, tiny_rm_dir, prompts_file):
    monkeypatch.setattr("bonsynth.generate.backends.resolve_backend_name", lambda name: "hf")
    m = SimpleNamespace(policy=tiny_policy_dir, rm=tiny_rm_dir, prompts=prompts_file)
    out = tmp_path / "never"
    recipe = write_recipe(tmp_path / "r.yaml", m, out, generation={"backend": "auto", "enforce_eager": True},
                          eval={"num_prompts": 2}, prompts_per_round=4)
    code, err = _loop_cli(monkeypatch, capsys, str(recipe))
    assert code == 2 and "generation.enforce_eager only apply to the vllm backend" in err and "backend auto is hf" in err
    assert not out.exists()


def _runner(recipe_dict: dict, out: Path):
    from bonsynth.loop.recipe import parse_recipe
    from bonsynth.loop.runner import LoopRunner

    return LoopRunner(parse_recipe(recipe_dict), SimpleNamespace(), out, show_progress=False)


def test_generation_options_reach_the_config_and_the_child(tmp_path, monkeypatch):
    def gen_config(runner):
        return runner._gen_config(policy="/m/p", rewards=["/m/rm"], weights=None, prompts=tmp_path / "p.jsonl",
                                  out=tmp_path / "g", n=2, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=1,
                                  select="best")

    plain = gen_config(_runner(_MINIMAL, tmp_path / "a"))
    assert (plain.trust_remote_code, plain.allow_unsafe_weights, plain.prefix_sharing, plain.reward_dtype,
            plain.max_model_len, plain.enforce_eager) == (False, False, "auto", None, None, False)

    recipe = _merge(_MINIMAL, {"trust_remote_code": True, "allow_unsafe_weights": True, "generation": {
        "backend": "vllm", "prefix_sharing": "off", "reward_dtype": "bfloat16", "max_model_len": 300,
        "enforce_eager": True}})
    cfg = gen_config(_runner(recipe, tmp_path / "b"))
    assert (cfg.trust_remote_code, cfg.allow_unsafe_weights, cfg.prefix_sharing, cfg.reward_dtype,
            cfg.max_model_len, cfg.enforce_eager) == (True, True, "off", "bfloat16", 300, True)
    # The child runs the very same config, so its resume fingerprint matches.
    got = config_in_generation_child(monkeypatch, cfg)
    assert got == cfg and got.fingerprint() == cfg.fingerprint()


def test_default_recipes_keep_their_fingerprint(tmp_path):
    from bonsynth.loop import load_recipe
    from bonsynth.loop.recipe import parse_recipe

    def fp(d: dict) -> str:
        return parse_recipe(d).fingerprint()

    assert fp(_MINIMAL) == _PINNED["minimal"] and fp(_FULL) == _PINNED["full"]
    repo = Path(__file__).resolve().parents[1]
    for name in ("quickstart", "raft-sft", "iterative-dpo"):
        assert load_recipe(repo / "recipes" / f"{name}.yaml").fingerprint() == _PINNED[name], name
    # The new keys spelled out at their defaults, or set where they change no output: the same fingerprint.
    defaults = {"trust_remote_code": False, "allow_unsafe_weights": False,
                "generation": {"prefix_sharing": "auto", "reward_dtype": None, "max_model_len": None,
                               "enforce_eager": False}}
    same = {"trust_remote_code": True, "allow_unsafe_weights": True,
            "generation": {"prefix_sharing": "off", "reward_dtype": "float32", "backend": "vllm", "enforce_eager": True}}
    assert fp(_merge(_FULL, defaults)) == _PINNED["full"]
    assert fp(_merge(_FULL, same)) == fp(_merge(_FULL, {"generation": {"backend": "vllm"}}))
    # What changes the datasets changes it.
    assert fp(_merge(_FULL, {"generation": {"reward_dtype": "bfloat16"}})) != _PINNED["full"]
    assert fp(_merge(_FULL, {"generation": {"backend": "vllm", "max_model_len": 256}})) != \
        fp(_merge(_FULL, {"generation": {"backend": "vllm"}}))

    # A loop directory written before the keys existed resumes (and one with another reward_dtype does not).
    from bonsynth.errors import ConfigError
    from bonsynth.loop.recipe import fingerprint_view
    from bonsynth.loop.runner import STATE_FILE

    out = tmp_path / "old"
    out.mkdir()
    view = fingerprint_view(parse_recipe(_FULL))
    assert not {"trust_remote_code", "allow_unsafe_weights"} & set(view)
    assert not {"prefix_sharing", "reward_dtype", "max_model_len", "enforce_eager"} & set(view["generation"])
    (out / STATE_FILE).write_text(json.dumps({"bonsynth_loop": 1, "recipe_fingerprint": _PINNED["full"], "recipe": view,
                                              "done": [], "stage": None, "timings_s": {}, "rounds_planned": 2}))
    _runner(_merge(_FULL, {"allow_unsafe_weights": True}), out).open(resume=True)
    with pytest.raises(ConfigError, match="differs in: generation"):
        _runner(_merge(_FULL, {"generation": {"reward_dtype": "bf16"}}), out).open(resume=True)


@pytest.fixture(scope="module")
def pickle_models(tmp_path_factory, tiny_policy_dir, tiny_rm_dir) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("pickle")
    return SimpleNamespace(policy=pickle_copy(tiny_policy_dir, root / "policy", "AutoModelForCausalLM"),
                           rm=pickle_copy(tiny_rm_dir, root / "rm", "AutoModelForSequenceClassification"))


def test_pickle_only_models_need_allow_unsafe_weights(tmp_path, monkeypatch, capsys, pickle_models, tiny_policy_dir,
                                                      tiny_rm_dir, prompts_file):
    """Refused up front (exit 2, one line naming the model and the recipe key), else every loader reads them."""
    safe = SimpleNamespace(policy=tiny_policy_dir, rm=tiny_rm_dir, prompts=prompts_file)
    tiny = {"rounds": 1, "prompts_per_round": 4, "generation": {"n": 2, "max_new_tokens": 6, "batch_size": 4},
            "update": {"epochs": 1, "batch_size": 4, "max_length": 48}, "eval": {"num_prompts": 2, "n": 2}}
    out = tmp_path / "loop"
    for key, over, path in (
        ("policy:", {"policy": str(pickle_models.policy)}, pickle_models.policy),
        ("rewards[0]:", {"rewards": [str(pickle_models.rm)]}, pickle_models.rm),
        ("eval.rewards[0]:", {"eval": {"rewards": [str(pickle_models.rm)]}}, pickle_models.rm),
        ("rm_update.labeler:", {"rm_update": {"labeler": str(pickle_models.rm)}}, pickle_models.rm),
    ):
        recipe = write_recipe(tmp_path / "refused.yaml", safe, out, **_merge(tiny, over))
        code, err = _loop_cli(monkeypatch, capsys, str(recipe))
        assert code == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert key in err and str(path) in err and "pytorch_model.bin" in err, err
        assert "set allow_unsafe_weights: true in the recipe" in err, err
        assert not out.exists()

    # Opted in: a round runs with a pickle-only policy (generation, SFT) and RM (scoring, rm_update's base).
    from bonsynth.loop import run_loop

    m = SimpleNamespace(policy=pickle_models.policy, rm=pickle_models.rm, prompts=prompts_file)
    recipe = write_recipe(tmp_path / "allowed.yaml", m, out, allow_unsafe_weights=True,
                          rm_update={"labeler": str(tiny_rm_dir), "epochs": 1, "batch_size": 4, "eval_split": 0.0},
                          **tiny)
    summary = run_loop(recipe, show_progress=False)
    assert summary["rounds_complete"] == 1
    rd = out / "round_000"
    assert (rd / "policy" / "model.safetensors").is_file() and json.loads((rd / "train.json").read_text())["num_examples"]
    assert json.loads((rd / "rm_update.json").read_text())["num_pairs"] >= 2  # trained from the pickle RM
    assert (rd / "rm" / "model.safetensors").is_file()
    man = json.loads((rd / "generate" / "manifest.json").read_text())
    assert man["config"]["allow_unsafe_weights"] is True and man["config"]["rewards"] == [str(pickle_models.rm)]


# ---------------------------------------------------------------------------------------------------- loops


@pytest.mark.slow
def test_three_sft_rounds_raise_the_mean_reward_round_over_round(tmp_path, learnable):
    from bonsynth.loop import run_loop
    from bonsynth.rm.model import RewardModel

    out = tmp_path / "loop"
    summary = run_loop(write_recipe(tmp_path / "r.yaml", learnable, out), show_progress=False)
    means = summary["reward_mean_by_round"]  # baseline, round 0, 1, 2
    print("eval reward mean by round (base first):", means)
    assert len(means) == 4 and summary["rounds_complete"] == 3
    assert means[0] < means[1] < means[2] < means[3], means
    assert means[3] - means[0] > 0.5, means

    rm = RewardModel.load(str(learnable.rm), device="cpu")
    for r in range(3):
        rd = out / f"round_{r:03d}"
        for f in ("prompts.jsonl", "generate/candidates.jsonl", "generate/sft.jsonl", "generate/dpo.jsonl",
                  "policy/model.safetensors", "policy/tokenizer.json", "eval/candidates.jsonl", "metrics.json",
                  "report.md", "reward_distribution.png", "reward_vs_round.png", "train.json"):
            assert (rd / f).is_file(), rd / f
        rec = json.loads((rd / "metrics.json").read_text())
        m = rec["eval"]
        cands = _rows(rd / "eval" / "candidates.jsonl")
        rewards = [c["reward"] for row in cands for c in row["candidates"]]
        assert m["reward_mean"] == pytest.approx(sum(rewards) / len(rewards))
        assert m["num_prompts"] == 16 and m["num_samples"] == 16 * 8
        assert m["bon_gain"] > 0 and 0 < m["distinct_2"] <= 1 and m["length_mean"] > 0
        assert m["win_rate_vs_previous"] > 0.5  # each round's samples beat the previous policy's, seed for seed
        assert rec["train"]["method"] == "sft" and rec["train"]["num_examples"] == 32
        # The SFT data is the round's best-of-N, and the rewards on disk are the RM's.
        sft = _rows(rd / "generate" / "sft.jsonl")
        gen = _rows(rd / "generate" / "candidates.jsonl")
        assert [s["completion"] for s in sft] == [g["candidates"][g["selected"][0]]["text"] for g in gen]
        sample = gen[0]["candidates"]
        assert [c["reward"] for c in sample] == pytest.approx(rm.score([(gen[0]["prompt"], c["text"]) for c in sample]),
                                                              abs=1e-5)
    # Fresh prompts each round, and never an eval prompt.
    ids = [{r["id"] for r in _rows(out / f"round_{k:03d}" / "prompts.jsonl")} for k in range(3)]
    eval_ids = {r["id"] for r in _rows(out / "eval_prompts.jsonl")}
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    assert not eval_ids & (ids[0] | ids[1] | ids[2]) and len(eval_ids) == 16
    # Round r+1 starts from round r's checkpoint.
    man = json.loads((out / "round_001" / "generate" / "manifest.json").read_text())
    assert man["config"]["policy"] == str((out / "round_000" / "policy").resolve())
    report = (out / "report.md").read_text()
    assert "reward_distribution.png" in report and "reward_vs_round.png" in report and "| round 2 |" in report
    loop_summary = json.loads((out / "loop_summary.json").read_text())
    assert [r["round"] for r in loop_summary["rounds"]] == [0, 1, 2]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", **ONE_THREAD_ENV)


def _start_loop(args: list[str]) -> subprocess.Popen:
    env = _env()
    return subprocess.Popen([sys.executable, "-m", "bonsynth", "loop", *args, "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _loop_files(out: Path) -> dict[str, bytes]:
    """Every dataset a loop wrote, by relative path."""
    names = ["eval_prompts.jsonl", "baseline/eval/candidates.jsonl"]
    for r in range(2):
        names += [f"round_{r:03d}/{f}" for f in ("prompts.jsonl", "generate/candidates.jsonl", "generate/sft.jsonl",
                                                 "generate/dpo.jsonl", "eval/candidates.jsonl", "eval/sft.jsonl")]
    return {n: (out / n).read_bytes() for n in names}


def _generators_writing(into: Path) -> list[int]:
    """Pids of live `bonsynth generate` processes writing into `into` (Linux /proc; [] elsewhere)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        if b"generate" in cmd and str(into.resolve()).encode() in cmd and "\nState:\tZ" not in status:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_killed_mid_round_then_resumed_reproduces_the_uninterrupted_loop(tmp_path, learnable, monkeypatch, capsys):
    from bonsynth.loop import run_loop

    small = {"rounds": 2, "prompts_per_round": 16, "generation": {"n": 4, "batch_size": 2},
             "eval": {"num_prompts": 8, "n": 4}, "update": {"epochs": 1}}
    ref = tmp_path / "ref"
    run_loop(write_recipe(tmp_path / "ref.yaml", learnable, ref, **small), show_progress=False)

    out = tmp_path / "killed"
    recipe = write_recipe(tmp_path / "killed.yaml", learnable, out, **small)
    # The same loop with generation in child processes (the vLLM path): not part of the recipe fingerprint, so
    # it may take over a resumed loop, and its datasets must be the same bytes as in-process generation's.
    child_gen = write_recipe(tmp_path / "child.yaml", learnable, out, **_merge(small, {"generation": {"subprocess": True}}))
    gen1 = out / "round_001" / "generate"
    # Kill points: while round 0's update is training; then inside round 1's generation (a child process) after
    # some of its batches are durable.
    kill_when = [
        (recipe, lambda: any((out / "round_000").glob(".policy.tmp-*"))),
        (child_gen, lambda: 0 < _json(gen1 / "state.json").get("prompts_done", 0) < 16),
    ]
    kills = 0
    for rec, cond in kill_when:
        kills += sigkill_when(_start_loop([str(rec), "--resume"]), cond, timeout=300)
    assert kills == 2
    if sys.platform.startswith("linux"):  # the generator child died with the loop that started it
        time.sleep(2.0)
        assert not _generators_writing(gen1)
        assert not _json(gen1 / "state.json").get("complete")  # (a surviving child would have finished)
    assert "round_001/eval" not in _json(out / "loop_state.json")["done"]  # it really stopped mid-loop
    r = subprocess.run([sys.executable, "-m", "bonsynth", "loop", str(child_gen), "--resume", "--quiet"],
                       capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr

    a, b = _loop_files(ref), _loop_files(out)
    for name in a:
        assert a[name] == b[name], name
    for rd in ("baseline", "round_000", "round_001"):
        assert json.loads((ref / rd / "metrics.json").read_text()) == json.loads((out / rd / "metrics.json").read_text())
    assert not list(out.glob("round_*/.*.tmp-*"))  # the killed build's temp directory was cleared

    # A finished loop: without --resume, or with another recipe, it is refused.
    code, err = _loop_cli(monkeypatch, capsys, str(recipe))
    assert code == 2 and "pass --resume" in err
    changed = write_recipe(tmp_path / "changed.yaml", learnable, out, seed=5, **small)
    code, err = _loop_cli(monkeypatch, capsys, str(changed), "--resume")
    assert code == 2 and "differs in: seed" in err


def test_dpo_with_lora_and_rm_update(tmp_path, learnable, tiny_rm_dir):
    """Iterative DPO (LoRA merged into each checkpoint) and a labeller-driven RM update."""
    import torch
    from safetensors.torch import load_file

    from bonsynth.rm.model import RewardModel

    rng = random.Random(7)  # chat prompts: the tiny tokenizer has no chat template, so the plain fallback is used
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"id": f"c{i}", "messages": [{"role": "system", "content": "You are a pirate."},
                                     {"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(3))}]}
        for i in range(24)
    ])
    out = tmp_path / "dpo"
    recipe = write_recipe(
        tmp_path / "dpo.yaml", learnable, out, rounds=2, prompts_per_round=8, rewards=[str(tiny_rm_dir)],
        prompts=[str(chat)],
        generation={"n": 4, "max_new_tokens": 12},
        selection={"select": "pairs"},
        update={"method": "dpo", "epochs": 1, "lr": 5.0e-3, "batch_size": 4, "beta": 0.1,
                "lora": {"r": 4, "alpha": 8}},
        rm_update={"labeler": str(learnable.rm), "epochs": 1, "lr": 1.0e-3, "batch_size": 4, "eval_split": 0.0},
        eval={"num_prompts": 8, "n": 2, "rewards": [str(learnable.rm)]},
    )
    from bonsynth.loop import run_loop

    summary = run_loop(recipe, show_progress=False)
    assert summary["rounds_complete"] == 2

    rd = out / "round_000"
    train = json.loads((rd / "train.json").read_text())
    pairs = _rows(rd / "generate" / "dpo.jsonl")
    assert train["method"] == "dpo" and train["lora"] and train["num_examples"] == len(pairs) > 0
    # The checkpoint is a plain model (adapter merged), and the update changed it.
    assert not (rd / "policy" / "adapter_config.json").exists()
    before, after = load_file(learnable.policy / "model.safetensors"), load_file(rd / "policy" / "model.safetensors")
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # The RM update: pairs re-ordered by the labeller, the RM fine-tuned, and the next round scored with it.
    rm_update = json.loads((rd / "rm_update.json").read_text())
    assert rm_update["num_pairs"] > 0 and 0.0 <= rm_update["agreement"] <= 1.0
    labeller = RewardModel.load(str(learnable.rm), device="cpu")
    rm_pairs = _rows(rd / "rm_pairs.jsonl")
    lab = labeller.score([(p["prompt"], p[k][0]["content"]) for p in rm_pairs for k in ("chosen", "rejected")])
    assert all(lab[2 * i] > lab[2 * i + 1] for i in range(len(rm_pairs)))
    assert (rd / "rm" / "bonsynth_rm.json").is_file()
    gen1 = json.loads((out / "round_001" / "generate" / "manifest.json").read_text())
    assert gen1["config"]["rewards"] == [str((rd / "rm").resolve())]
    # Eval keeps its own fixed yardstick.
    ev1 = json.loads((out / "round_001" / "eval" / "manifest.json").read_text())
    assert ev1["config"]["rewards"] == [str(learnable.rm)]
    assert json.loads((out / "round_001" / "metrics.json").read_text())["eval"]["win_rate_vs_previous"] is not None


def test_synthetic_prompts_each_round_by_the_current_policy(tmp_path, learnable):
    """`prompts: - synth:`: every round makes fresh prompts with the round's policy (round 1: round 0's
    checkpoint), they are what the round generates on, the eval prompts stay the fixed file, and a resumed loop
    does not synthesise again."""
    rng = random.Random(3)
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [
        {"id": f"s{i}", "prompt": " ".join(rng.choice(WORDS) for _ in range(5))} for i in range(12)])
    evalp = write_jsonl(tmp_path / "eval.jsonl", [
        {"id": f"e{i}", "prompt": " ".join(rng.choice(WORDS) for _ in range(3))} for i in range(6)])
    out = tmp_path / "synth-loop"
    synth = {"seeds": str(seeds), "per_round": 4, "max_new_tokens": 12, "min_words": 1, "language_check": False,
             "max_similarity": 1.0, "max_requests": 40, "batch_size": 8}
    recipe = write_recipe(tmp_path / "synth.yaml", learnable, out, rounds=2, prompts=[{"synth": synth}],
                          generation={"n": 2, "max_new_tokens": 8}, update={"epochs": 1},
                          eval={"prompts": [str(evalp)], "num_prompts": None, "n": 2})
    from bonsynth.loop import run_loop

    assert run_loop(recipe, show_progress=False)["rounds_complete"] == 2
    eval_ids = [r["id"] for r in _rows(out / "eval_prompts.jsonl")]
    assert eval_ids == [f"e{i}" for i in range(6)]
    made = []
    for r, policy in ((0, str(learnable.policy)), (1, "round_000/policy")):
        rd = out / f"round_{r:03d}"
        summary = json.loads((rd / "synth" / "summary.json").read_text())
        assert summary["model"] == policy and summary["kept"] == 4 and summary["made"] == 4
        synth_rows = _rows(rd / "synth" / "prompts.jsonl")
        assert all(row["seed_ids"] and set(row["seed_ids"]) <= {f"s{i}" for i in range(12)} for row in synth_rows)
        round_rows = _rows(rd / "prompts.jsonl")
        assert [x["id"] for x in round_rows] == [x["id"] for x in synth_rows]
        assert [x["prompt"] for x in round_rows] == [x["prompt"] for x in synth_rows]
        gen_ids = [x["id"] for x in _rows(rd / "generate" / "candidates.jsonl")]
        assert gen_ids == [x["id"] for x in round_rows]
        made.append({x["id"] for x in round_rows})
    assert not made[0] & made[1]  # fresh ids (and prompts) every round

    before = (out / "round_001" / "synth" / "prompts.jsonl").read_bytes()
    assert run_loop(recipe, resume=True, show_progress=False)["rounds_complete"] == 2
    assert (out / "round_001" / "synth" / "prompts.jsonl").read_bytes() == before


def test_synthetic_prompts_need_a_fixed_eval_set(tmp_path, learnable):
    from bonsynth.loop.recipe import parse_recipe

    base = yaml.safe_load(write_recipe(tmp_path / "r.yaml", learnable, tmp_path / "o").read_text())
    base["prompts"] = [{"synth": {"seeds": str(learnable.prompts), "per_round": 4}}]
    with pytest.raises(Exception, match="eval.prompts"):
        parse_recipe(base)
    base["prompts"].append({"synth": {"seeds": str(learnable.prompts), "per_round": 2}})
    base["eval"] = {"prompts": [str(learnable.prompts)]}
    with pytest.raises(Exception, match="more than one 'synth'"):
        parse_recipe(base)
    base["prompts"] = [str(learnable.prompts), {"synth": {"seeds": str(learnable.prompts), "per_round": 2,
                                                          "bogus": 1}}]
    with pytest.raises(Exception, match="bogus"):
        parse_recipe(base)
