"""Evaluation: does an adapter sound like me?

Pure logic, no Dagster: each module measures one thing and can be used on its own.

* :mod:`~echo_pipeline.evaluation.style`: how replies look (length, casing, punctuation,
  emoji, vocabulary, character n-grams) and how far one set of replies is from another.
* :mod:`~echo_pipeline.evaluation.attribution`: a character n-gram logistic regression that
  tells my turns from other people's, to score generations.
* :mod:`~echo_pipeline.evaluation.relevance`: all-MiniLM-L6-v2 similarity (offline) and
  repetition (distinct-n).
* :mod:`~echo_pipeline.serving.generation`: batched generation with the training template.
* :mod:`~echo_pipeline.evaluation.echo_quality`: collapse, babble, parroting, memorising,
  relevance, in-context fit, discriminators, and the verdict.
* :mod:`~echo_pipeline.evaluation.baselines`: sides no training made (replay), judged like
  the models.
* :mod:`~echo_pipeline.evaluation.evaluate`: all of it for one adapter, base vs adapter.
* :mod:`~echo_pipeline.evaluation.report`: the self-contained HTML report and metrics JSON.
* :mod:`~echo_pipeline.evaluation.runs`: the MLflow side (training history, evaluation runs).
* :mod:`~echo_pipeline.evaluation.comparison`: the leaderboard over every adapter.

Only numpy and pandas are imported at module level (torch, transformers, mlflow and matplotlib
inside functions), so the Dagster code location stays quick to load.
"""
