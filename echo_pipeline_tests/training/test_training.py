"""LoRA training on a tiny random Llama: learning, determinism, checkpoints, resume, early stop."""

from __future__ import annotations

import errno
import itertools
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from echo_pipeline.infra.storage import AtomicWriteError
from echo_pipeline.training.checkpoints import CHECKPOINTS_DIR
from echo_pipeline.training.config import TrainingConfig, lr_at
from echo_pipeline.training.loop import train_lora, validation_sample
from echo_pipeline.training.losses import measure_temperature, reply_loss
from echo_pipeline.training.packing import IGNORE_INDEX, pack_examples

BOS, EOS = 1, 2
INIT_RANGE = 0.2  # wide enough that the frozen random lm_head can express a confident reply


def tiny_llama():
    """A 2-layer Llama with seeded random weights: the same base model on every call."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=BOS,
        eos_token_id=EOS,
        initializer_range=INIT_RANGE,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def chat_examples(count: int, *, seed: int, reply_tokens: tuple[int, ...]):
    """Random prompts answered in one recognisable style: a catchphrase the adapter can learn."""
    rng = random.Random(seed)
    examples = []
    for i in range(count):
        prompt = [BOS] + [rng.randrange(10, 500) for _ in range(rng.randrange(4, 9))]
        reply = [reply_tokens[0] + i % 3, *reply_tokens[1:]]
        examples.append(
            {"input_ids": prompt + reply, "labels": [IGNORE_INDEX] * len(prompt) + reply}
        )
    return examples


TRAIN = chat_examples(12, seed=1, reply_tokens=(600, 700, 701, 702, EOS))
VAL = chat_examples(4, seed=2, reply_tokens=(600, 700, 701, 702, EOS))


def config(**overrides) -> TrainingConfig:
    settings = dict(
        lora_r=8,
        lora_alpha=16,
        learning_rate=1e-2,
        warmup_steps=2,
        max_steps=20,
        pack_tokens=64,
        eval_every=5,
        checkpoint_every=4,
        log_every=5,
        seed=0,
        torch_threads=1,  # a 64-wide model gains nothing from more, and loses a lot on a busy CPU
    )
    return TrainingConfig(**(settings | overrides))


def adapter_weights(result):
    return load_file(result.adapter_dir / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 20-step run that several tests compare against."""
    logs = []
    result = train_lora(
        tiny_llama(),
        None,
        TRAIN,
        VAL,
        config(),
        tmp_path_factory.mktemp("reference"),
        on_log=lambda step, metrics: logs.append((step, metrics)),
    )
    return result, logs


def test_training_lowers_the_reply_loss_and_reports_progress(reference):
    result, logs = reference
    base_val_loss = reply_loss(tiny_llama(), VAL, batch_tokens=64)

    assert result.completed and result.steps == 20 == len(result.train_losses)
    assert sum(result.train_losses[-5:]) / 5 < 0.3 * result.train_losses[0]
    assert result.final_eval_loss < 0.6 * base_val_loss  # the style carries to unseen prompts
    assert [step for step, _ in result.eval_losses] == [5, 10, 15, 20]
    assert result.best_eval_loss == min(loss for _, loss in result.eval_losses)
    assert result.padding_waste == 0.0 and result.real_tokens == result.tokens_processed > 0
    assert result.tokens_per_s > 0 and result.final_train_loss is not None

    progress = [(step, m) for step, m in logs if "loss" in m]
    assert [step for step, _ in progress] == [5, 10, 15, 20]
    expected = {"loss", "learning_rate", "grad_norm", "tokens_per_s", "real_tokens"}
    expected |= {"padding_waste", "eta_s", "epoch"}
    assert all(set(m) == expected for _, m in progress)
    assert progress[-1][1]["eta_s"] == 0.0
    assert [step for step, m in logs if "eval_loss" in m] == [5, 10, 15, 20]
    assert {p.name for p in result.adapter_dir.iterdir()} >= {
        "adapter_model.safetensors",
        "adapter_config.json",
    }


def test_two_runs_give_identical_loss_curves_and_weights(reference, tmp_path):
    first, _ = reference
    second = train_lora(tiny_llama(), None, TRAIN, VAL, config(), tmp_path)

    assert second.train_losses == first.train_losses
    assert second.eval_losses == first.eval_losses
    for name, tensor in adapter_weights(first).items():
        assert torch.equal(tensor, adapter_weights(second)[name]), name


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(reference, tmp_path):
    uninterrupted, _ = reference

    stopped = train_lora(
        tiny_llama(), None, TRAIN, VAL, config(), tmp_path, should_stop=lambda step: step == 10
    )
    assert not stopped.completed and stopped.steps == 10 and stopped.adapter_dir is None
    checkpoints = tmp_path / CHECKPOINTS_DIR
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-10", "step-8"]

    logs = []
    resumed = train_lora(
        tiny_llama(), None, TRAIN, VAL, config(), tmp_path, on_log=lambda s, m: logs.append((s, m))
    )
    assert resumed.resumed_from_step == 10 and (10, {"resumed_from_step": 10.0}) in logs
    assert resumed.completed and resumed.steps == 20
    assert resumed.train_losses == uninterrupted.train_losses
    assert resumed.eval_losses == uninterrupted.eval_losses
    assert resumed.real_tokens == uninterrupted.real_tokens
    for name, tensor in adapter_weights(uninterrupted).items():
        assert torch.equal(tensor, adapter_weights(resumed)[name]), name
    # A finished run leaves its adapter and no checkpoint: nothing to resume any more.
    assert not checkpoints.exists() and (tmp_path / "adapter").is_dir()

    again = train_lora(tiny_llama(), None, TRAIN, VAL, config(), tmp_path)
    assert again.resumed_from_step is None and again.steps == 20
    assert again.train_losses == uninterrupted.train_losses


def test_a_checkpoint_save_that_fails_half_way_leaves_the_previous_one_to_resume_from(
    reference, tmp_path, monkeypatch
):
    """A full disk while writing step-8: no half checkpoint where resume looks, step-4 stays."""
    uninterrupted, _ = reference
    real_save = torch.save

    def disk_full_at_step_8(obj, where, *args, **kwargs):
        if ".step-8." in str(where):
            Path(where).write_bytes(b"half an optimizer state")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, where, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_8)
    with pytest.raises(AtomicWriteError, match="step-8: could not be written"):
        train_lora(tiny_llama(), None, TRAIN, VAL, config(), tmp_path)
    checkpoints = tmp_path / CHECKPOINTS_DIR
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-4"]  # nothing hidden either

    monkeypatch.setattr(torch, "save", real_save)
    resumed = train_lora(tiny_llama(), None, TRAIN, VAL, config(), tmp_path)
    assert resumed.resumed_from_step == 4 and resumed.completed
    assert resumed.train_losses == uninterrupted.train_losses


def test_checkpoints_of_another_run_are_discarded(tmp_path):
    short = config(max_steps=6)
    train_lora(
        tiny_llama(),
        None,
        TRAIN,
        VAL,
        short,
        tmp_path,
        run_fingerprint="a",
        should_stop=lambda s: s == 4,
    )

    logs = []
    rerun = train_lora(
        tiny_llama(),
        None,
        TRAIN,
        VAL,
        short,
        tmp_path,
        run_fingerprint="b",
        on_log=lambda step, metrics: logs.append((step, metrics)),
    )
    assert rerun.resumed_from_step is None and rerun.steps == 6
    assert (0, {"checkpoints_discarded": 1.0}) in logs


def test_the_saved_adapter_loads_with_peft_and_gives_the_trained_logits(reference):
    from peft import PeftModel

    result, _ = reference
    loaded = PeftModel.from_pretrained(tiny_llama(), result.adapter_dir).eval()
    ids = torch.tensor([TRAIN[0]["input_ids"]])

    with torch.no_grad():
        trained = result.model(input_ids=ids, use_cache=False).logits
        reloaded = loaded(input_ids=ids, use_cache=False).logits
        base = tiny_llama().eval()(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(reloaded, trained, atol=1e-6, rtol=0)
    assert (reloaded - base).abs().max() > 0.1
    # peft's "all-linear" leaves the output layer alone, so lm_head is the base model's.
    adapted = {name for name, p in result.model.named_parameters() if p.requires_grad}
    assert adapted and not any("lm_head" in name for name in adapted)


def test_early_stopping_stops_and_keeps_the_best_adapter(tmp_path):
    """Validation replies in another style: fitting the training style makes eval loss rise."""
    other_style = chat_examples(4, seed=2, reply_tokens=(800, 900, 901, 902, 903))
    result = train_lora(
        tiny_llama(),
        None,
        TRAIN,
        other_style,
        config(max_steps=40, eval_every=2, early_stopping_patience=2),
        tmp_path,
    )

    assert result.early_stopped and result.completed and result.steps < 40
    assert result.eval_losses[-1][0] == result.steps
    assert result.best_step < result.steps
    assert all(loss > result.best_eval_loss for _, loss in result.eval_losses[-2:])
    # The adapter in memory and on disk is the best one, not the last one.
    assert result.final_eval_loss == result.best_eval_loss
    assert reply_loss(result.model, other_style, batch_tokens=64) == pytest.approx(
        result.best_eval_loss, abs=1e-6
    )
    # Its temperature is the best step's, the one this adapter measures again.
    measured = measure_temperature(result.model, other_style, batch_tokens=64)
    assert [step for step, _ in result.eval_temperatures] == [s for s, _ in result.eval_losses]
    assert (
        result.calibrated_temperature
        == measured
        == dict(result.eval_temperatures)[result.best_step]
    )
    assert result.metrics()["calibrated_temperature"] == measured


def test_a_resumed_run_remembers_its_best_adapter_and_patience(tmp_path):
    """Interrupted after the best eval but before early stopping: the resume ends the same way."""
    other_style = chat_examples(4, seed=2, reply_tokens=(800, 900, 901, 902, 903))
    settings = config(max_steps=40, eval_every=2, early_stopping_patience=2)
    whole = train_lora(tiny_llama(), None, TRAIN, other_style, settings, tmp_path / "whole")
    stop_at = whole.best_step + 1  # the checkpoint must carry best weights that are not current

    train_lora(
        tiny_llama(),
        None,
        TRAIN,
        other_style,
        settings,
        tmp_path / "split",
        should_stop=lambda step: step == stop_at,
    )
    resumed = train_lora(tiny_llama(), None, TRAIN, other_style, settings, tmp_path / "split")

    assert resumed.resumed_from_step == stop_at
    assert (resumed.steps, resumed.best_step) == (whole.steps, whole.best_step)
    assert resumed.eval_losses == whole.eval_losses
    for name, tensor in adapter_weights(whole).items():
        assert torch.equal(tensor, adapter_weights(resumed)[name]), name


def test_a_capped_validation_pass_scores_the_same_seeded_sample_every_time(tmp_path):
    val = chat_examples(6, seed=2, reply_tokens=(800, 900, 901, 902, 903))
    capped = config(max_steps=4, eval_every=2, eval_max_pairs=3, seed=7)
    sample = validation_sample(val, capped)
    assert len(sample) == 3 and sample == validation_sample(val, capped)  # same draw each time
    assert [val.index(e) for e in sample] == sorted(val.index(e) for e in sample)  # in order
    assert validation_sample(val, config(eval_max_pairs=0)) == val
    assert validation_sample(val, config(eval_max_pairs=10)) == val
    with pytest.raises(ValueError, match="eval_max_pairs"):
        config(eval_max_pairs=-1)

    result = train_lora(tiny_llama(), None, TRAIN, val, capped, tmp_path)
    # every pass, and the adapter kept, were judged on those three pairs only
    on_sample = reply_loss(result.model, sample, batch_tokens=64)
    assert result.final_eval_loss == pytest.approx(on_sample, abs=1e-6)
    assert reply_loss(result.model, val, batch_tokens=64) != pytest.approx(on_sample, abs=1e-3)


def test_packed_loss_is_transformers_own_loss_on_the_same_row():
    """The shift and the reply-only logits agree with transformers' loss with labels."""
    model = tiny_llama().eval()
    (row,) = pack_examples(TRAIN, max_tokens=4096, seed=0, shuffle=False)

    with torch.no_grad():
        expected = model(
            input_ids=torch.tensor([row.input_ids]),
            position_ids=torch.tensor([row.position_ids]),
            labels=torch.tensor([row.labels]),
            use_cache=False,
        ).loss.item()
    assert reply_loss(model, TRAIN, batch_tokens=4096) == pytest.approx(expected, abs=1e-5)


def test_gradient_checkpointing_and_accumulation_train_the_same_way(tmp_path):
    plain = train_lora(
        tiny_llama(), None, TRAIN, [], config(max_steps=3, grad_accum=2), tmp_path / "a"
    )
    checkpointed = train_lora(
        tiny_llama(),
        None,
        TRAIN,
        [],
        config(max_steps=3, grad_accum=2, gradient_checkpointing=True),
        tmp_path / "b",
    )

    assert checkpointed.train_losses == pytest.approx(plain.train_losses, abs=1e-5)
    assert plain.final_eval_loss is None and plain.eval_losses == []


def test_epochs_set_the_number_of_steps(tmp_path):
    packs = len(pack_examples(TRAIN, max_tokens=64, seed=0, shuffle=False))
    result = train_lora(
        tiny_llama(), None, TRAIN, VAL, config(max_steps=0, epochs=2.0, grad_accum=2), tmp_path
    )
    assert result.steps == math.ceil(2 * packs / 2)


def test_the_learning_rate_warms_up_then_follows_a_cosine():
    rates = [lr_at(s, peak=1.0, warmup_steps=4, total_steps=20, min_ratio=0.0) for s in range(20)]

    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert rates[4] == 1.0 and all(a > b for a, b in itertools.pairwise(rates[4:]))
    assert 0 < rates[-1] < 0.01


def test_a_model_that_already_has_an_adapter_is_refused(reference, tmp_path):
    result, _ = reference
    with pytest.raises(ValueError, match="already carries adapter layers"):
        train_lora(result.model.get_base_model(), None, TRAIN, VAL, config(), tmp_path)


def test_a_4bit_quantised_model_trains_with_qlora(tmp_path):
    """The QLoRA path (prepare_model_for_kbit_training) on CPU with bitsandbytes."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_llama().save_pretrained(tmp_path / "base")
    quantised = AutoModelForCausalLM.from_pretrained(
        tmp_path / "base",
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
        device_map={"": "cpu"},
    )
    assert any(type(m).__name__ == "Linear4bit" for m in quantised.modules())
    result = train_lora(quantised, None, TRAIN, VAL, config(max_steps=4), tmp_path / "run")

    assert result.completed and all(math.isfinite(loss) for loss in result.train_losses)
    assert result.train_losses[-1] < result.train_losses[0]


def test_qlora_on_a_bf16_compute_base_keeps_bf16_weights_and_adapters(tmp_path):
    """peft's k-bit preparation would upcast embeddings, norms and lm_head to fp32 and, through
    them, make fp32 adapters; a bf16 QLoRA run keeps both in bf16."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from echo_pipeline.training.lora import compute_dtype_of, resolve_adapter_dtype

    tiny_llama().save_pretrained(tmp_path / "base")
    quantised = AutoModelForCausalLM.from_pretrained(
        tmp_path / "base",
        dtype=torch.bfloat16,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        ),
        device_map={"": "cpu"},
    )
    assert compute_dtype_of(quantised) == torch.bfloat16
    assert resolve_adapter_dtype("auto", torch.bfloat16, on_cuda=True) == "bfloat16"
    assert resolve_adapter_dtype("auto", torch.bfloat16, on_cuda=False) == "float32"

    run = config(max_steps=3, adapter_dtype="bfloat16", learning_rate=5e-3)
    result = train_lora(quantised, None, TRAIN, VAL, run, tmp_path / "run")

    dtypes = {
        name: p.dtype
        for name, p in result.model.named_parameters()
        if p.dtype.is_floating_point and type(p).__name__ != "Params4bit"
    }
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.bfloat16}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    assert result.completed and all(math.isfinite(loss) for loss in result.train_losses)


def test_the_calibrated_temperature_is_the_vertex_between_grid_points():
    """Losses from a parabola with its lowest point between two grid temperatures: the vertex
    comes back, not the nearest grid point; a minimum at the grid's end stays at the end."""
    from echo_pipeline.training.losses import TEMPERATURE_GRID, calibrated_temperature

    for vertex in (0.63, 0.97, 1.18):
        losses = [3.0 + 2.0 * (t - vertex) ** 2 for t in TEMPERATURE_GRID]
        assert calibrated_temperature(losses) == pytest.approx(vertex, abs=0.005)
    falling = [5.0 - t for t in TEMPERATURE_GRID]
    assert calibrated_temperature(falling) == TEMPERATURE_GRID[-1]
    with pytest.raises(ValueError, match="one loss per grid temperature"):
        calibrated_temperature([1.0, 2.0])


@pytest.mark.slow
def test_the_measured_temperature_is_where_a_real_models_loss_is_lowest(base_model):
    """On real SmolLM2 and chat replies, the measured temperature lands where the reply loss,
    recomputed here with plain full-sequence logits at fine steps, is lowest."""
    import torch.nn.functional as F

    from echo_pipeline.datasets.templates import ChatPair
    from echo_pipeline.datasets.tokenization import tokenize_pair
    from echo_pipeline.training.base_model import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(base_model)
    model = load_causal_lm(base_model).eval()
    replies = [
        ("are you coming tonight?", "yeah be there at 8, save me a seat"),
        ("did the build pass?", "nope, linker error again. looking at it"),
        ("what do you think of the new release", "honestly it's fine, the docs are still bad"),
        ("lunch?", "sure, the usual place?"),
    ]
    examples = [
        tokenize_pair("chatml", tokenizer, ChatPair((), prompt, reply, "friend"))
        for prompt, reply in replies
    ]
    measured = measure_temperature(model, examples)

    fine = [0.5 + 0.01 * i for i in range(101)]
    losses = [0.0] * len(fine)
    with torch.inference_mode():
        for example in examples:
            ids = torch.tensor([example.input_ids])
            labels = torch.tensor(example.labels[1:])
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            keep = labels != IGNORE_INDEX
            for i, temperature in enumerate(fine):
                losses[i] += F.cross_entropy(
                    logits[keep] / temperature, labels[keep], reduction="sum"
                ).item()
    lowest = fine[min(range(len(fine)), key=losses.__getitem__)]
    assert 0.5 < lowest < 1.5  # inside the grid, so the check below means something
    assert measured == pytest.approx(lowest, abs=0.03)
