"""Issue #22's evaluation gates on real chats, with no training: can replay or word salad pass?

For each corpus, pairs are built with ``echo-pipeline pairs`` (as a user would), then sides no
model wrote are scored exactly as an evaluation scores the base and the adapter (MiniLM
loaded, as ``evaluation_report`` does):

* ``mine``: my real held-out replies themselves; every gate must pass;
* ``replay``: my real reply to the most similar train prompt, verbatim;
* ``salad``: word salad of my own train words, as long as my replies (plus two words).

Prints per side the new measures, the verdict and the gates that failed, and the seconds each
new measure costs (the added cost of a report). ``--corpora sample`` runs the bundled demo
sample. Results go to ``benchmarks/results/eval_gates.json``.

    python benchmarks/bench_eval_gates.py --corpora ece722,amulius,sample
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "echo_pipeline_tests" / "fixtures" / "real"
CORPORA = {  # name: (export path or folder, me)
    "ece722": ("*ece722*.json", "277113830809534464"),
    "amulius": ("*Amulius*.json", "296272996442570753"),
    "sdr": ("*SDRplusplus*.json", "274976585650536449"),
    "rinkhals": ("*Rinkhals*.json", "207668238182514688"),
    "sample": (str(ROOT / "data" / "sample"), "291274804919574979"),
}
SHOWN = (
    "known_word_rate",
    "known_bigram_rate",
    "memorised_share",
    "in_context",
    "relevance_gain",
    "discriminator_auc",
    "embedding_discriminator_auc",
)


def build_pairs(corpus: str, out: Path) -> Path:
    pattern, me = CORPORA[corpus]
    source = Path(pattern) if corpus == "sample" else next(REAL.glob(pattern))
    command = [
        sys.executable,
        "-m",
        "echo_pipeline.operations.cli",
        "pairs",
        str(source),
        "--me",
        me,
    ]
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    return out


def run(corpus: str, embedder, work: Path) -> dict:
    import numpy as np
    import pandas as pd

    from echo_pipeline.evaluation import evaluate
    from echo_pipeline.evaluation.relevance import CachedEmbedder
    from echo_pipeline.evaluation.style import words

    pairs = pd.read_parquet(build_pairs(corpus, work / f"{corpus}.parquet"))
    config = evaluate.EvaluationConfig()
    split = evaluate.heldout_split_name(pairs)
    heldout = pairs[pairs["split"] == split].reset_index(drop=True)
    chosen = evaluate.select_prompts(heldout, config.num_prompts, config.generation.seed)
    data = evaluate.HeldOut(None, None, pairs, split, heldout, chosen)
    train = pairs[pairs["split"] == "train"]
    train_prompts = evaluate.select_prompts(
        train, config.discriminator_prompts, config.generation.seed + 1
    )
    generated = evaluate.Generated({}, train_prompts, {})
    cached = CachedEmbedder(embedder)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    samples = pd.DataFrame({"prompt": chosen["prompt"], "real": chosen["reply"]})
    samples, _ = evaluate.answer_with_baselines(data, samples, generated, config, embedder=cached)
    seconds["replay (nearest train prompt)"] = time.perf_counter() - started

    rng = np.random.default_rng(0)
    train_words = [w for reply in train["reply"] for w in words(reply)]

    def salad(like: str) -> str:
        return " ".join(rng.choice(train_words, size=len(words(like)) + 2))

    generated.draws["salad"] = [[salad(r) for r in chosen["reply"]]]
    generated.train_replies["salad"] = [salad(r) for r in train_prompts["reply"]]
    generated.draws["mine"] = [chosen["reply"].tolist()]
    generated.train_replies["mine"] = train_prompts["reply"].tolist()

    started = time.perf_counter()
    metrics = evaluate.score_echo(data, generated, config, cached)
    seconds["score_echo, 3 sides (all measures, old and new)"] = time.perf_counter() - started
    seconds |= component_seconds(data, generated, config, embedder)
    verdicts = evaluate.judge(metrics, config.thresholds, ["mine", "replay", "salad"])
    return {
        "corpus": corpus,
        "train_pairs": len(train),
        "evaluated_prompts": len(chosen),
        "metrics": {k: v for k, v in metrics.items() if k.endswith(SHOWN) or "in_context" in k},
        "verdicts": {
            s: {"label": v.label, "reasons": list(v.reasons)} for s, v in verdicts.items()
        },
        "seconds": seconds,
    }


def component_seconds(data, generated, config, embedder) -> dict[str, float]:
    """Each new measure timed alone for one model side (an adapter's two draws), fresh cache."""
    from echo_pipeline.evaluation import echo_quality as eq
    from echo_pipeline.evaluation.evaluate import similarity_matrix
    from echo_pipeline.evaluation.relevance import CachedEmbedder

    cached = CachedEmbedder(embedder)
    train = data.pairs[data.pairs["split"] == "train"]
    prompts, real = data.chosen["prompt"].astype(str).tolist(), data.chosen["reply"].tolist()
    draws = generated.draws["salad"] * 2
    out = {}
    started = time.perf_counter()
    index = eq.TrainReplyIndex.build(train["reply"])
    bigrams = eq.bigram_vocabulary(train["reply"])
    for draw in draws:
        eq.memorised_share(draw, index)
        eq.known_bigram_rate(draw, bigrams, prompts)
    out["memorised + known bigrams, per side"] = time.perf_counter() - started
    started = time.perf_counter()
    eq.in_context_interval(draws, prompts, similarity_matrix(cached))
    out["in context (MiniLM, uncached), per side"] = time.perf_counter() - started
    real_train = train["reply"].astype(str).tolist()[:2000]
    started = time.perf_counter()
    eq.discriminator_interval(
        real_train,
        generated.train_replies["salad"],
        real,
        [t for d in draws for t in d],
        embed=cached.encode,
    )
    out["embedding discriminator (uncached), per side"] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="ece722,amulius")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "eval_gates.json"))
    args = parser.parse_args()
    from echo_pipeline.pairs.embedder import SentenceEmbedder

    embedder = SentenceEmbedder.load()
    results = []
    with tempfile.TemporaryDirectory() as work:
        for corpus in args.corpora.split(","):
            result = run(corpus, embedder, Path(work))
            results.append(result)
            print(
                f"\n== {corpus}: {result['train_pairs']} train pairs, "
                f"{result['evaluated_prompts']} held-out prompts"
            )
            metrics = result["metrics"]
            print(
                f"{'measure':30s}"
                + "".join(f"{s:>10s}" for s in ("real", "mine", "replay", "salad"))
            )
            for name in SHOWN:
                cells = [
                    metrics.get(f"{side}_{name}") for side in ("real", "mine", "replay", "salad")
                ]
                print(
                    f"{name:30s}"
                    + "".join(f"{'–' if c is None else f'{c:.3f}':>10s}" for c in cells)
                )
            for side, judged in result["verdicts"].items():
                print(f"  {side}: {judged['label']}")
                for reason in judged["reasons"]:
                    print(f"      {reason}")
            for what, value in result["seconds"].items():
                print(f"  {what}: {value:.1f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
