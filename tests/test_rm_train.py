"""`rm train`: each objective learns a marker-word task; truncation keeps the response; LoRA saves a plain
merged model; the saved RM works in `pipeline("text-classification")`; bad input exits 2 with one line."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bonsynth.errors import BonsynthError, ConfigError, InputError  # noqa: E402
from bonsynth.rm.meta import RMMeta, file_sha256  # noqa: E402
from bonsynth.rm.train import RMTrainConfig, split_records, train_reward_model  # noqa: E402

FILLER = "apple river stone cloud green music table window paper light dog chair happy slow quick".split()
MARKER = "banana"  # a response that contains it is the better one


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads cost more than they save


def response(rng: random.Random, marker: bool) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
    if marker:
        words.insert(rng.randrange(len(words) + 1), MARKER)
    return " ".join(words)


def prompt(rng: random.Random, i: int, long: bool = False) -> str:
    text = f"Question {i}: say something about {rng.choice(FILLER)}."
    return ("Some context. " * 30 + text) if long else text


def make_rows(objective: str, n: int, seed: int, long_every: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        p = prompt(rng, i, long=bool(long_every) and i % long_every == 0)
        if objective == "pairwise":
            rows.append({"prompt": p, "chosen": response(rng, True), "rejected": response(rng, False)})
        elif objective == "binary":
            rows.append({"prompt": p, "response": response(rng, i % 2 == 1), "label": i % 2})
        else:
            rows.append(
                {
                    "id": f"g{seed}-{i}",
                    "prompt": p,
                    "responses": [response(rng, True), response(rng, False), response(rng, False)],
                    "scores": [1.0, 0.0, 0.0],
                }
            )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rmtrain")


@pytest.fixture(scope="module")
def tokenizer():
    from bonsynth.demo.models import train_tokenizer

    texts = [f"Question {i}: say something about {' '.join(FILLER)} {MARKER}. Some context." for i in range(50)]
    return train_tokenizer(texts, vocab_size=320)


@pytest.fixture(scope="module")
def base_dir(workdir, tokenizer) -> Path:
    """A tiny causal LM (no score head): training must add and initialise one."""
    from bonsynth.demo.models import save_model, tiny_causal_lm

    return save_model(tiny_causal_lm(tokenizer, seed=0), tokenizer, workdir / "base")


@pytest.fixture(scope="module")
def data(workdir) -> dict[str, dict[str, Path]]:
    out = {}
    for objective, n_train in (("pairwise", 160), ("binary", 200), ("ranked", 96)):
        out[objective] = {
            "train": write_jsonl(workdir / f"{objective}-train.jsonl", make_rows(objective, n_train, seed=1)),
            "test": write_jsonl(workdir / f"{objective}-test.jsonl", make_rows(objective, 60, seed=2)),
        }
    return out


def config(base_dir: Path, data_file: Path, objective: str, out: Path, **kw) -> RMTrainConfig:
    opts = dict(epochs=3, lr=2e-3, batch_size=16, eval_split=0.2, seed=0, disable_tqdm=True, logging_steps=1000)
    opts.update(kw)
    return RMTrainConfig(base=str(base_dir), data=[str(data_file)], objective=objective, out=out, **opts)


def metric(model_dir: Path | None, test_file: Path, key: str, base_cfg: RMTrainConfig | None = None) -> float:
    """A metric on the held-out test file: of a saved RM, or (before training) of the freshly headed base."""
    from bonsynth.rm.evaluate import evaluate_files, evaluate_records
    from bonsynth.rm.model import RewardModel
    from bonsynth.rm.train import load_base_model

    if model_dir is not None:
        return evaluate_files(str(model_dir), [str(test_file)])[0][key]
    from bonsynth.data.readers import load_records

    model, tok, max_length = load_base_model(base_cfg)
    data = load_records(test_file)
    return evaluate_records(RewardModel.from_model(model.eval(), tok, max_length=max_length), data.kind, data.records)[key]


@pytest.mark.parametrize(
    ("objective", "key"), [("pairwise", "accuracy"), ("binary", "accuracy"), ("binary", "auc"), ("ranked", "ndcg")]
)
def test_objective_learns_marker_task(objective, key, base_dir, data, workdir):
    out = workdir / f"rm-{objective}"
    cfg = config(base_dir, data[objective]["train"], objective, out, epochs=4 if objective == "binary" else 3)
    if not (out / "config.json").exists():  # the binary model serves two metrics
        result = train_reward_model(cfg)
        assert result["objective"] == objective
        assert result["num_train"] + result["num_eval"] == {"pairwise": 160, "binary": 200, "ranked": 96}[objective]
        assert math.isfinite(result["train_loss"]) and result["seconds"] > 0
        assert "eval_accuracy" in result
        if objective == "ranked":
            assert result["num_train_pairs"] == 2 * result["num_train"]
            assert "eval_ndcg" in result
        if objective == "binary":
            assert "eval_auc" in result
    before = metric(None, data[objective]["test"], key, cfg)
    after = metric(out, data[objective]["test"], key)
    threshold = {"auc": 0.95, "ndcg": 0.9}.get(key, 0.8)
    assert after > before, (before, after)
    assert after > threshold, (before, after)


def test_saved_metadata(base_dir, data, workdir):
    from bonsynth.data.readers import load_records
    from bonsynth.rm.model import RewardModel

    out = workdir / "rm-pairwise"
    if not (out / "config.json").exists():
        train_reward_model(config(base_dir, data["pairwise"]["train"], "pairwise", out))
    meta = RMMeta.load(out)
    assert meta.objective == "pairwise" and meta.num_labels == 1
    assert meta.label_mapping == {"0": "reward"}
    train_file = data["pairwise"]["train"]
    assert meta.data_hashes == {str(train_file): file_sha256(train_file)}
    assert meta.base_model == str(base_dir)
    # mean/std: the rewards of every chosen and rejected response in the eval split, recomputed here
    _, held = split_records(load_records(train_file).records, 0.2, 0)
    rm = RewardModel.load(out)
    rewards = rm.score([(p.prompt, p.chosen) for p in held] + [(p.prompt, p.rejected) for p in held])
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    assert meta.reward_mean == pytest.approx(mean, abs=1e-4)
    assert meta.reward_std == pytest.approx(std, rel=1e-4)
    assert not any(out.glob("*.bin")) and (out / "model.safetensors").exists()
    assert not (out / "checkpoint-1").exists() and not list(out.glob("checkpoint-*"))


def test_binary_rm_in_text_classification_pipeline(base_dir, data, workdir):
    """The seed blog's call: pipeline(..., top_k=None); P(LABEL_1) must be sigmoid(reward)."""
    from transformers import pipeline

    from bonsynth.rm.model import RewardModel

    out = workdir / "rm-binary"
    if not (out / "config.json").exists():
        train_reward_model(config(base_dir, data["binary"]["train"], "binary", out, epochs=4))
    assert RMMeta.load(out).label_mapping == {"0": "bad", "1": "good"}
    rng = random.Random(5)
    texts = [prompt(rng, i) + " " + response(rng, i % 2 == 0) for i in range(6)]
    pipe = pipeline("text-classification", model=str(out), top_k=None, device="cpu")
    outputs = pipe(texts)
    rewards = RewardModel.load(out).score(texts)
    for out_one, reward in zip(outputs, rewards, strict=True):
        probs = {d["label"]: d["score"] for d in out_one}
        assert set(probs) == {"LABEL_0", "LABEL_1"}
        assert probs["LABEL_1"] == pytest.approx(1 / (1 + math.exp(-reward)), abs=1e-4)


def test_pairwise_rm_in_pipeline(base_dir, data, workdir):
    from transformers import pipeline

    from bonsynth.rm.model import RewardModel

    out = workdir / "rm-pairwise"
    if not (out / "config.json").exists():
        train_reward_model(config(base_dir, data["pairwise"]["train"], "pairwise", out))
    texts = ["Question 1: say something about dog. apple banana river", "Question 2: say something about dog. sky"]
    got = [o[0]["score"] for o in pipeline("text-classification", model=str(out), top_k=None, device="cpu")(texts)]
    want = [1 / (1 + math.exp(-r)) for r in RewardModel.load(out).score(texts)]
    assert got == pytest.approx(want, abs=1e-4)


def test_model_setup_follows_open_instruct(workdir, tokenizer):
    """No dropout, right padding, a pad token when there is none, head std = 1/sqrt(hidden + 1)."""
    from bonsynth.demo.models import save_model, tiny_causal_lm
    from bonsynth.rm.train import load_base_model

    no_pad = type(tokenizer).from_pretrained(save_model(tiny_causal_lm(tokenizer), tokenizer, workdir / "tmp-tok"))
    no_pad.pad_token = None
    assert no_pad.pad_token is None
    base = save_model(tiny_causal_lm(no_pad, seed=3, n_embd=256, n_head=4, resid_pdrop=0.3), no_pad, workdir / "nopad")
    cfg = RMTrainConfig(base=str(base), data=["x"], objective="pairwise", out=workdir / "unused")
    model, tok, _ = load_base_model(cfg)
    assert tok.pad_token is not None and tok.padding_side == "right"
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert model.config.resid_pdrop == 0.0
    std = float(model.score.weight.detach().std())
    assert std == pytest.approx(1 / math.sqrt(256 + 1), rel=0.2)  # HF's own init would give ~0.02


def test_truncation_keeps_response_and_is_counted(base_dir, workdir, tokenizer):
    from bonsynth.rm.encode import encode_items
    from bonsynth.rm.model import RewardModel
    from bonsynth.rm.train import load_base_model

    # unit level: a long prompt loses its left side, the response survives whole
    cfg = RMTrainConfig(base=str(base_dir), data=["x"], objective="pairwise", out=workdir / "unused", max_length=24)
    model, tok, max_length = load_base_model(cfg)
    assert max_length == 24
    rm = RewardModel.from_model(model, tok, max_length=max_length)
    rng = random.Random(0)
    long_prompt, resp = prompt(rng, 1, long=True), " apple banana river stone"
    too_long_response = " " + " ".join(["apple"] * 40)
    short, cut, overflow = encode_items(rm, [("Q?", resp), (long_prompt, resp), ("Q?", too_long_response)])
    resp_ids = tok(resp, add_special_tokens=False)["input_ids"]
    assert not short.truncated and short.fits
    assert cut.truncated and cut.fits and len(cut.input_ids) <= 24
    assert cut.input_ids[-len(resp_ids) :] == resp_ids
    assert tok.decode(cut.input_ids).endswith(resp)
    assert overflow.fits is False

    # training level: every long-prompt pair is truncated (and reported), none is dropped
    rows = make_rows("pairwise", 40, seed=3, long_every=4)
    data_file = write_jsonl(workdir / "long.jsonl", rows)
    result = train_reward_model(
        config(base_dir, data_file, "pairwise", workdir / "rm-long", max_length=48, epochs=1, eval_split=0.25)
    )
    from bonsynth.data.readers import load_records

    train, _ = split_records(load_records(data_file).records, 0.25, 0)
    expected = sum(1 for p in train if isinstance(p.prompt, str) and p.prompt.startswith("Some context."))
    assert expected > 0
    assert result["num_truncated"] == expected
    assert result["num_dropped"] == 0
    assert result["max_length"] == 48 and RMMeta.load(workdir / "rm-long").max_length == 48


def test_lora_saves_plain_merged_model(base_dir, data, workdir):
    from transformers import AutoModelForSequenceClassification

    out = workdir / "rm-lora"
    result = train_reward_model(config(base_dir, data["pairwise"]["train"], "pairwise", out, lora_r=4, lr=1e-2, epochs=4))
    assert result["lora_r"] == 4
    names = {p.name for p in out.iterdir()}
    assert "adapter_config.json" not in names and "adapter_model.safetensors" not in names
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    assert metric(out, data["pairwise"]["test"], "accuracy") > 0.7


# ------------------------------------------------------------------------------------------- bad input


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from bonsynth.cli import main

    monkeypatch.setattr(sys, "argv", ["bonsynth", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_cli_bad_input_exits_2(monkeypatch, capsys, base_dir, data, workdir):
    pairs, binary = str(data["pairwise"]["train"]), str(data["binary"]["train"])
    empty = workdir / "empty.jsonl"
    empty.write_text("")
    prompts = write_jsonl(workdir / "prompts.jsonl", [{"prompt": "hi"}, {"prompt": "there"}])
    out = str(workdir / "never")
    cases = [
        (["--base", str(base_dir), "--data", pairs, "--objective", "listwise"], "objective"),
        (["--base", str(workdir / "missing"), "--data", pairs, "--objective", "pairwise"], "not found"),
        (["--base", str(base_dir), "--data", str(empty), "--objective", "pairwise"], "empty"),
        (["--base", str(base_dir), "--data", binary, "--objective", "pairwise"], "binary data does not fit"),
        (["--base", str(base_dir), "--data", str(prompts), "--objective", "ranked"], "prompts"),
        (["--base", str(base_dir), "--data", pairs, "--objective", "pairwise", "--eval-split", "1.5"], "eval-split"),
    ]
    for args, needle in cases:
        code, stdout, stderr = run_cli(monkeypatch, capsys, "rm", "train", *args, "--out", out)
        assert code == 2, (args, stderr)
        assert needle in stderr, stderr
        assert "Traceback" not in stderr
        if needle != "objective":  # click's own usage errors print a usage line too
            assert len(stderr.strip().splitlines()) == 1, stderr
    assert not Path(out).exists()


def test_library_errors_are_user_errors(base_dir, data, workdir):
    with pytest.raises(ConfigError, match="unknown objective"):
        RMTrainConfig(base=str(base_dir), data=["x"], objective="listwise", out=workdir / "x")
    with pytest.raises(ConfigError, match="report-to"):
        train_reward_model(config(base_dir, data["pairwise"]["train"], "pairwise", workdir / "x", report_to="nosuchlogger"))
    one = write_jsonl(workdir / "one.jsonl", make_rows("pairwise", 1, seed=9))
    result = train_reward_model(config(base_dir, one, "pairwise", workdir / "rm-one", epochs=1))
    assert result["num_train"] == 1 and result["num_eval"] == 0 and result["stats_split"] == "train"
    assert issubclass(InputError, BonsynthError)


def test_a_trained_reward_head_is_kept_when_training_continues(tmp_path, tiny_rm_dir):
    """Fine-tuning an existing RM (the loop's rm_update) must not re-draw its trained head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from bonsynth.rm.train import init_score_head

    model, info = AutoModelForSequenceClassification.from_pretrained(str(tiny_rm_dir), output_loading_info=True)
    before = model.score.weight.detach().clone()
    fresh = {k.rsplit(".", 1)[0] for k in info.get("missing_keys", ())}
    assert init_score_head(model, 1, fresh) is False
    assert torch.equal(model.score.weight, before)
    assert init_score_head(model, 1, {"score"}) is True
    assert not torch.equal(model.score.weight, before)
