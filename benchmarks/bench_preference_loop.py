"""One DPO step two ways on the same pairs: the project's packed loop against the padded batch
TRL's DPOTrainer builds (chosen and rejected concatenated, right-padded to the longest, full
vocabulary logits at every position, then the reply positions gathered).

Why: the issue asks to choose between TRL and our loop by measurement. TRL is not installed
(it would add trl and datasets to the pins and to CI's install), so this times the computation
its trainer does with plain transformers, beside ours, on the real base model.

    python benchmarks/bench_preference_loop.py --pairs data/preference_pairs/chatml__demo.parquet \
        --dataset data/template_dataset/chatml.parquet --steps 3 --pairs-per-step 8
"""

from __future__ import annotations

import argparse
import json
import time

import pyarrow.parquet as pq


def padded_logprobs(model, sequences, pad_id):
    """Summed reply log-probs as TRL computes them: one padded batch, logits everywhere."""
    import torch

    width = max(len(s["input_ids"]) for s in sequences)
    ids = torch.tensor(
        [s["input_ids"] + [pad_id] * (width - len(s["input_ids"])) for s in sequences]
    )
    labels = torch.tensor([s["labels"] + [-100] * (width - len(s["labels"])) for s in sequences])
    mask = torch.tensor(
        [[1] * len(s["input_ids"]) + [0] * (width - len(s["input_ids"])) for s in sequences]
    )
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    targets = labels[:, 1:]
    keep = targets != -100
    gathered = torch.gather(logits.log_softmax(-1), 2, targets.clamp(min=0)[..., None])[..., 0]
    return (gathered * keep).sum(-1), int(ids.numel()), int(mask.sum())


def token_accounting(args: argparse.Namespace) -> dict:
    """Tokens each way for every step of one pass over the pairs: what TRL's padded batch
    feeds the model and projects onto the vocabulary, against the packed rows and the labelled
    positions only."""
    from echo_pipeline.preference import dpo as pref
    from echo_pipeline.training.adapters import load_dataset
    from echo_pipeline.training.base_model import load_tokenizer, resolve_base_model

    tokenizer = load_tokenizer(resolve_base_model())
    frame = load_dataset(args.dataset)
    examples, _ = pref.preference_examples(
        pq.read_table(args.pairs), frame, args.template, tokenizer
    )
    real = padded = labelled = 0
    for start in range(0, len(examples), args.pairs_per_step):
        batch = examples[start : start + args.pairs_per_step]
        sequences = [e.chosen for e in batch] + [e.rejected for e in batch]
        lengths = [len(s["input_ids"]) for s in sequences]
        real += sum(lengths)
        padded += max(lengths) * len(lengths)
        labelled += sum(sum(1 for t in s["labels"] if t != -100) for s in sequences)
    return {
        "pairs": len(examples),
        "padded_tokens_per_real_token": padded / real,
        "padding_waste_padded": 1 - real / padded,
        "vocab_projections_padded_per_packed": padded / labelled,
        "labelled_share_of_real_tokens": labelled / real,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--template", default="chatml")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--pairs-per-step", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--count-only", action="store_true", help="token accounting only (no model, no timing)"
    )
    args = parser.parse_args()
    if args.count_only:
        print(json.dumps(token_accounting(args), indent=1))
        return

    import torch

    from echo_pipeline.preference import dpo as pref
    from echo_pipeline.training.adapters import load_dataset
    from echo_pipeline.training.base_model import load_causal_lm, load_tokenizer, resolve_base_model
    from echo_pipeline.training.config import TrainingConfig
    from echo_pipeline.training.lora import attach_lora

    torch.set_num_threads(args.threads)
    base = resolve_base_model()
    tokenizer = load_tokenizer(base)
    frame = load_dataset(args.dataset)
    examples, _ = pref.preference_examples(
        pq.read_table(args.pairs), frame, args.template, tokenizer
    )
    model = attach_lora(load_causal_lm(base, dtype="float32"), TrainingConfig())
    model.train()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results = {}
    for way in ("packed", "padded"):
        seconds, processed, real = 0.0, 0, 0
        for step in range(args.steps):
            batch = examples[step * args.pairs_per_step : (step + 1) * args.pairs_per_step]
            sequences = [e.chosen for e in batch] + [e.rejected for e in batch]
            started = time.perf_counter()
            if way == "packed":
                logps = pref.sequence_logprobs(model, sequences, 1024)
                tokens = sum(len(s["input_ids"]) for s in sequences)
                processed, real = processed + tokens, real + tokens
            else:
                logps, padded, used = padded_logprobs(model, sequences, pad)
                processed, real = processed + padded, real + used
            n = len(batch)
            loss, _ = pref.dpo_loss(
                logps[:n], logps[n:], logps[:n].detach(), logps[n:].detach(), 0.1
            )
            loss.backward()
            model.zero_grad(set_to_none=True)
            seconds += time.perf_counter() - started
        results[way] = {
            "seconds_per_step": seconds / args.steps,
            "real_tokens_per_s": real / seconds,
            "padding_waste": 1 - real / processed,
        }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
