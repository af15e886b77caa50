"""Evaluation suite: a resumable ``policy x mem_size x length`` grid runner and the evaluations on it.

* :mod:`lococo.evaluation.grid`: cells, policy setup (fresh or loaded LoCoCo heads), the resumable runner
  that writes ``{"meta", "records"}`` JSON plus a Markdown table and a PNG plot after every cell.
* :mod:`lococo.evaluation.perplexity`: perplexity of long documents read segment by segment (``lococo eval ppl``).
* :mod:`lococo.evaluation.passkey`: passkey retrieval at a given depth and length (``lococo eval passkey``).
* :mod:`lococo.evaluation.lm_eval_adapter`: the ``lococo`` model type for lm-evaluation-harness.
* :mod:`lococo.evaluation.cli`: the ``lococo eval`` subcommand.
* :mod:`lococo.evaluation.report`: report meta, resumable records, JSON/Markdown/PNG writing (shared).
* :mod:`lococo.evaluation.bench`: speed and memory per policy and cache size (``lococo bench``).

This package imports nothing heavy at import time, so the CLI stays fast.
"""
