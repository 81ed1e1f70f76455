"""lm-eval adapter: the "esolm" model on harness checkpoints and the local corpus task, offline."""

import importlib.util
import json
import math
from types import SimpleNamespace

import pytest
import torch

from harness.evaluators import sliding_windows
from tests.test_evaluators import make_checkpoint

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                reason="lm-eval not installed (pip install -e '.[eval]')")


def _req(*args):
    return SimpleNamespace(args=args)


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ar")
    make_checkpoint(root / "run", "ar", max_len=32)
    return root / "run"


def _rolling_direct(model, ids):
    """Exact AR log-likelihood of ids[1:] with the documented sliding window."""
    return -sum(model.token_nll(torch.tensor([ids[s:e]]))[0, f - s - 1 :].sum().item()
                for s, e, f in sliding_windows(len(ids), model.backbone_config.max_len))


def test_simple_evaluate_end_to_end_offline(ar_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    import harness.lm_eval_adapter as A
    from harness.checkpoints.own_format import load_checkpoint

    task_dir = A.write_lm_eval_task(tmp_path / "tasks", n_docs=3, max_chars=300)
    yaml_text = (task_dir / "esolm_corpus_ppl.yaml").read_text()
    data_file = task_dir / "esolm_corpus_ppl.jsonl"
    assert json.dumps(str(data_file)) in yaml_text and str(data_file).startswith("/")  # absolute path
    docs = [json.loads(line)["text"] for line in data_file.read_text().splitlines()]
    assert len(docs) == 3

    results = A.evaluate(ar_run, tasks=["esolm_corpus_ppl"], include_path=task_dir, batch_size=2)
    got = results["results"]["esolm_corpus_ppl"]

    loaded = load_checkpoint(ar_run)
    model, tok = loaded.model, loaded.tokenizer
    lls = [_rolling_direct(model, [tok.bos_id] + tok.encode(d)) for d in docs]
    assert any(len(tok.encode(d)) + 1 > 32 for d in docs)  # the sliding window is exercised
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert got["byte_perplexity,none"] == pytest.approx(math.exp(-sum(lls) / n_bytes), rel=1e-6)
    assert got["bits_per_byte,none"] == pytest.approx(-sum(lls) / n_bytes / math.log(2), rel=1e-6)
    assert got["word_perplexity,none"] > got["byte_perplexity,none"]


def test_both_tasks_spell_out_their_metrics_and_the_prompts_cut_between_words(tmp_path):
    import yaml

    from harness.lm_eval_tasks import GENERATION_TASK, PROMPT_CHARS, TASK_NAME, write_lm_eval_task

    docs = [{"title": "t", "source": "s", "text": "alpha beta\n\ngamma " * 40}, {"text": "too short"}]
    out = write_lm_eval_task(tmp_path / "tasks", documents=docs)
    for task in (TASK_NAME, GENERATION_TASK):
        cfg = yaml.safe_load((out / f"{task}.yaml").read_text())
        assert cfg["task"] == task and cfg["dataset_kwargs"]["data_files"]["test"] == str(out / f"{task}.jsonl")
        for metric in cfg["metric_list"]:  # lm-eval warns for each one left to its defaults
            assert {"aggregation", "higher_is_better"} <= set(metric), metric
    items = [json.loads(line) for line in (out / f"{GENERATION_TASK}.jsonl").read_text().splitlines()]
    assert len(items) == 1  # the short piece has no continuation to score
    flat = " ".join(docs[0]["text"].split())
    prompt, target = items[0]["prompt"], items[0]["target"]
    assert len(prompt) <= PROMPT_CHARS and flat.startswith(prompt + " " + target)
    assert prompt.split()[-1] in ("alpha", "beta", "gamma") and target.split()[0] in ("alpha", "beta", "gamma")


def test_generation_task_runs_offline_and_scores_what_the_model_wrote(ar_run, tmp_path, monkeypatch, caplog):
    import sacrebleu

    import harness.lm_eval_adapter as A
    from harness.lm_eval_tasks import GENERATION_TASK

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    task_dir = A.write_lm_eval_task(tmp_path / "tasks", n_docs=3)
    with caplog.at_level("WARNING"):
        results = A.evaluate(ar_run, tasks=[GENERATION_TASK], include_path=task_dir, batch_size=2, limit=3)
    assert not [r for r in caplog.records if "is defined, but" in r.getMessage()]
    samples = results["samples"][GENERATION_TASK]
    written = [s["filtered_resps"][0] for s in samples]
    targets = [s["target"] for s in samples]
    assert len(written) == 3 and all(isinstance(w, str) for w in written)
    expected = sacrebleu.corpus_chrf(written, [targets]).score
    assert results["results"][GENERATION_TASK]["chrf,none"] == pytest.approx(expected)


def test_ar_loglikelihood_is_exact_and_greedy_flag_is_right(ar_run):
    from harness.lm_eval_adapter import EsoLMHarnessLM

    lm = EsoLMHarnessLM(checkpoint=str(ar_run), batch_size=2, device="cpu")
    model, tok = lm.model, lm.tokenizer
    context = "It is a truth universally"
    # greedy continuation of three tokens, computed without the adapter
    ids = [tok.bos_id] + tok.encode(context)
    greedy = []
    for _ in range(3):
        logits = model.next_token_logits(torch.tensor([ids + greedy]))[0, -1]
        greedy.append(int(logits.argmax()))
    pairs = [(context, " acknowledged"), ("", "Hello there"), (context, tok.decode(greedy))]
    out = lm.loglikelihood([_req(c, k) for c, k in pairs])
    for (c, k), (ll, _) in zip(pairs, out):
        ctx_ids, cont_ids = lm._encode_pair(c, k)
        full = [tok.bos_id] + ctx_ids + cont_ids
        nll = model.token_nll(torch.tensor([full]))[0]
        assert ll == pytest.approx(-nll[len(ctx_ids):].sum().item(), rel=1e-6)
    # is_greedy on token ids (a random model's greedy bytes need not survive a text round trip)
    [(lp, is_greedy)] = lm._ar_logprobs([ids + greedy], [len(ids)])
    assert is_greedy is True
    assert lp == pytest.approx(-model.token_nll(torch.tensor([ids + greedy]))[0, len(ids) - 1 :].sum().item(), rel=1e-6)
    other = greedy[:2] + [greedy[2] + 1 if greedy[2] + 1 < tok.mask_id else 1]  # not the argmax
    assert lm._ar_logprobs([ids + other], [len(ids)])[0][1] is False

    rolling = lm.loglikelihood_rolling([_req("Short text.")])
    assert rolling[0] == pytest.approx(-model.nll(torch.tensor([[tok.bos_id] + tok.encode("Short text.")])).nats.item(),
                                       rel=1e-6)


def test_ar_generate_until_is_greedy_and_stops(ar_run):
    from harness.lm_eval_adapter import EsoLMHarnessLM

    lm = EsoLMHarnessLM(checkpoint=str(ar_run), device="cpu")
    model, tok = lm.model, lm.tokenizer
    prompt = "The quick brown"
    ids = [tok.bos_id] + tok.encode(prompt)
    new = []
    for _ in range(8):  # uncached reference decode
        nxt = int(model.next_token_logits(torch.tensor([ids + new]))[0, -1].argmax())
        if nxt == tok.eos_id:
            break
        new.append(nxt)
    expected = tok.decode(new)
    [text] = lm.generate_until([_req(prompt, {"until": [], "max_gen_toks": 8})])
    assert text == expected
    assert len(expected) > 2
    stop = expected[1:3]
    [cut] = lm.generate_until([_req(prompt, {"until": [stop], "max_gen_toks": 8})])
    assert cut == expected[: expected.index(stop)]


def test_diffusion_model_scores_with_its_estimator(tmp_path):
    from harness.lm_eval_adapter import EsoLMHarnessLM

    make_checkpoint(tmp_path / "mdlm", "mdlm", max_len=32)
    lm = EsoLMHarnessLM(checkpoint=str(tmp_path / "mdlm"), device="cpu", draws=2)
    reqs = [_req("It is a truth", " universally acknowledged"), _req("", "Hello")]
    a, b = lm.loglikelihood(reqs), lm.loglikelihood(reqs)
    assert a == b and all(math.isfinite(ll) and greedy is False for ll, greedy in a)  # seeded
    # The documented value: nll(BOS + context) − nll(BOS + context + continuation), same noise.
    ctx, cont = lm._encode_pair(*reqs[0].args)
    with torch.random.fork_rng():
        torch.manual_seed(lm.seed)
        full = lm.model.nll(torch.tensor([[lm.bos] + ctx + cont]), draws=2).nats.item()
        alone = lm.model.nll(torch.tensor([[lm.bos] + ctx]), draws=2).nats.item()
    [(ll, _)] = lm.loglikelihood(reqs[:1])
    assert ll == pytest.approx(alone - full, rel=1e-6, abs=1e-6) and alone != full
    doc = "The quick brown fox jumps over the lazy dog. " * 4  # longer than one 32-token chunk
    [r1] = lm.loglikelihood_rolling([_req(doc)])
    assert math.isfinite(r1) and r1 < 0
    with pytest.raises(ValueError, match="exact_order"):
        EsoLMHarnessLM(checkpoint=str(tmp_path / "mdlm"), exact_order=True)
    with pytest.raises(ValueError, match="unknown esolm model arg"):
        EsoLMHarnessLM(checkpoint=str(tmp_path / "mdlm"), temperature=1.0)


@pytest.mark.parametrize("name,args", [("mdlm", {}), ("bd3lm", {}), ("esolm-b", {"alpha_0": 0.5, "steps": 3})])
def test_diffusion_generate_until_samples_from_the_prompt(tmp_path, name, args):
    """The model's own sampler with [BOS] + context as the given prefix: the same text as a
    direct call, cut at EOS and at ``until``; seeded, so a second call repeats it."""
    from harness.lm_eval_adapter import EsoLMHarnessLM

    make_checkpoint(tmp_path / name, name, max_len=32)
    lm = EsoLMHarnessLM(checkpoint=str(tmp_path / name), device="cpu", **args)
    model, tok = lm.model, lm.tokenizer
    prompt = [tok.bos_id] + tok.encode("It is a truth")
    length = len(prompt) + 8
    length += -length % getattr(model, "block_size", 1)
    schedule = lm.generation_schedule(length - len(prompt), 1.0)
    assert schedule.steps == (args.get("steps", length - len(prompt)) if name != "bd3lm" else None)
    gen = model.sample(1, length, schedule, torch.Generator().manual_seed(0), prefix=torch.tensor(prompt))
    assert gen.tokens[0, : len(prompt)].tolist() == prompt
    new = gen.tokens[0, len(prompt) : len(prompt) + 8].tolist()
    expected = tok.decode(new[: new.index(tok.eos_id)] if tok.eos_id in new else new)
    [text] = lm.generate_until([_req("It is a truth", {"until": [], "max_gen_toks": 8})])
    assert text == expected and lm.generate_until([_req("It is a truth", {"max_gen_toks": 8})]) == [text]
    if len(text) > 2:
        [cut] = lm.generate_until([_req("It is a truth", {"until": [text[1:3]], "max_gen_toks": 8})])
        assert cut == text[: text.index(text[1:3])]


def test_lm_eval_cli_takes_batch_size_in_model_args(ar_run, tmp_path, monkeypatch, capsys):
    """lm_eval's CLI adds its own batch_size; one in model_args used to be a TypeError."""
    import harness.lm_eval_adapter as A

    tasks = A.write_lm_eval_task(tmp_path / "tasks", n_docs=1, max_chars=100)
    monkeypatch.setattr("sys.argv", ["esolm-lm-eval", "--model", "esolm", "--tasks", "esolm_corpus_ppl",
                                     "--model_args", f"checkpoint={ar_run},batch_size=8,device=cpu",
                                     "--include_path", str(tasks), "--batch_size", "2"])
    A.main()
    assert "esolm_corpus_ppl" in capsys.readouterr().out
    lm = A.EsoLMHarnessLM.create_from_arg_string(f"checkpoint={ar_run},batch_size=8", {"batch_size": 2,
                                                                                      "device": "cpu"})
    assert lm.batch_size == 8 and lm.device.type == "cpu"


@pytest.mark.parametrize("argv, fragment", [
    (["--model_args", "checkpoint={missing}", "--include_path", "{tasks}"], "checkpoint '"),
    (["--model_args", "ckpt={run}", "--include_path", "{tasks}"], "unknown esolm model arg(s) ['ckpt']"),
    (["--model_args", "checkpoint={run}"], "then pass --include_path DIR"),
    (["--model_args", "checkpoint={run},device=tpu", "--include_path", "{tasks}"],  # was torch's RuntimeError
     "esolm model arg device: unknown device 'tpu'; use 'auto', 'cpu' or 'cuda[:N]'"),
    (["--model_args", "checkpoint={run},steps=4,device=cpu", "--include_path", "{tasks}"],  # AR reads no steps
     "model_args steps= does not apply to ar; it reads no schedule fields"),
])
def test_lm_eval_cli_mistakes_are_one_line_errors(ar_run, tmp_path, monkeypatch, capsys, argv, fragment):
    import harness.lm_eval_adapter as A

    tasks = A.write_lm_eval_task(tmp_path / "tasks", n_docs=1, max_chars=100)
    names = {"missing": tmp_path / "nope", "tasks": tasks, "run": ar_run}
    monkeypatch.setattr("sys.argv", ["esolm-lm-eval", "--model", "esolm", "--tasks", "esolm_corpus_ppl",
                                     *[a.format(**names) for a in argv]])
    with pytest.raises(SystemExit) as exit_info:
        A.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith("esolm-lm-eval: error:") and fragment in err[-1], err


def test_a_task_that_needs_the_hub_is_one_line_naming_the_flag(monkeypatch, capsys):
    """--tasks lambada_openai used to end in a 30-line ConnectionError: the wrapper keeps the
    hub offline and said so nowhere.  --allow-hub lets lm-eval reach it (and its errors through)."""
    import lm_eval.__main__

    import harness.lm_eval_adapter as A

    def offline():
        raise ConnectionError("Couldn't reach 'EleutherAI/lambada_openai' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("sys.argv", ["esolm-lm-eval", "--model", "esolm", "--tasks", "lambada_openai"])
    with pytest.raises(SystemExit) as exit_info:
        A.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "pass --allow-hub" in err[0], err
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("sys.argv", ["esolm-lm-eval", "--allow-hub", "--model", "esolm", "--tasks", "lambada_openai"])
    with pytest.raises(ConnectionError):
        A.main()
    import os

    assert "HF_HUB_OFFLINE" not in os.environ  # the hub was allowed


def test_lm_evals_default_cuda_device_is_dropped_quietly_on_a_cpu(ar_run, capsys, monkeypatch):
    """lm-eval's CLI passes device cuda:0 by default; on a CPU machine that printed a line the user
    never asked for.  A device the user gives in model_args is still theirs."""
    import harness.lm_eval_adapter as A

    monkeypatch.setattr(A.torch.cuda, "is_available", lambda: False)
    lm = A.EsoLMHarnessLM.create_from_arg_obj({"checkpoint": str(ar_run)}, {"device": "cuda:0", "batch_size": 2})
    assert lm.device.type == "cpu" and "requested" not in capsys.readouterr().err
