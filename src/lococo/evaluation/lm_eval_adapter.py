"""The ``lococo`` model type for lm-evaluation-harness (``pip install lm-eval``; tested with 0.4.13).

Every request runs with a fresh cache of the chosen policy: the context is read by chunked prefill in
segments of B tokens (so it may be far longer than the memory), then the continuation is scored (or
generated) through the same fixed-size cache. Usage::

    import lococo.evaluation.lm_eval_adapter  # registers the model type "lococo"
    lm_eval.simple_evaluate(model="lococo",
                            model_args="pretrained=PATH,policy=lococo,mem_size=128,segment_size=512,heads=DIR",
                            tasks=[...])

or on the command line ``python -m lococo.evaluation.lm_eval_adapter --model lococo --model_args ... --tasks ...``
(lm-eval's own CLI with the model type registered). ``pretrained`` omitted = the offline reference
model; ``heads`` omitted = fresh, untrained LoCoCo heads. A model object and tokenizer can be passed
directly (``LococoLM(pretrained=model, tokenizer=tok)``).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..generation import generate, prefill
from ..policies import policy_class
from .grid import policy_caches
from .perplexity import score_tokens

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # pragma: no cover - exercised only without lm-eval
    raise ImportError(
        "lococo.evaluation.lm_eval_adapter needs lm-evaluation-harness: pip install lm-eval"
    ) from exc

logger = logging.getLogger(__name__)


@register_model("lococo")
class LococoLM(TemplateLM):
    """A Hugging Face causal LM whose every request is read through a fixed-size lococo cache.

    Args:
        pretrained: model folder or hub id (None = the offline reference model), or a loaded model.
        tokenizer: a tokenizer object or name (default: the one loaded with ``pretrained``).
        policy: cache policy name (``lococo``, ``full``, ``window``, ...).
        mem_size: memory slots M; segment_size: segment length B.
        heads: folder with trained LoCoCo heads (``policy=lococo``; default fresh, untrained heads).
        dtype, attn, device: model loading options; max_gen_toks: default generation budget.
        seed: initialisation seed of fresh heads (and of the ``random`` policy).
    """

    def __init__(
        self,
        pretrained: Any = None,
        tokenizer: Any = None,
        policy: str = "lococo",
        mem_size: int = 128,
        segment_size: int = 512,
        heads: str | None = None,
        dtype: str = "float32",
        attn: str = "sdpa",
        device: str | None = None,
        max_gen_toks: int = 256,
        seed: int = 0,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            logger.info("lococo lm-eval model: ignoring %s", ", ".join(sorted(unused)))
        if isinstance(pretrained, torch.nn.Module):
            if tokenizer is None or isinstance(tokenizer, str):
                raise ConfigError("pass the tokenizer object together with a loaded model")
            self.model, self.tokenizer = pretrained, tokenizer
        else:
            from ..models import load_model, prepare_tokenizer

            self.model, loaded_tokenizer = load_model(pretrained, dtype=dtype, attn_implementation=attn)
            if isinstance(tokenizer, str):
                from transformers import AutoTokenizer

                loaded_tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(tokenizer))
            self.tokenizer = tokenizer if tokenizer is not None and not isinstance(tokenizer, str) else loaded_tokenizer
        if device is not None:
            self.model.to(device)
        self.model.eval()
        self._device = next(self.model.parameters()).device
        self.policy, self.mem_size, self.segment_size = policy, int(mem_size), int(segment_size)
        self.max_gen_toks = int(max_gen_toks)
        self._stack = ExitStack()
        self.new_cache = self._stack.enter_context(
            policy_caches(
                self.model, policy, self.mem_size if policy_class(policy).uses_mem_size else None, self.segment_size,
                heads_dir=heads, seed=int(seed),
            )
        )

    def close(self) -> None:
        """Detach the heads this adapter attached (the model is the original one again)."""
        self._stack.close()

    # ---------------------------------------------------------------------------------------------- tokens
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string`` (no special tokens unless asked)."""
        return list(self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens)))

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # ---------------------------------------------------------------------------------------------- scoring
    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Log-probability of ``continuation`` after ``context`` (read by chunked prefill), and greediness."""
        if not context or not continuation:
            raise ConfigError("loglikelihood needs a non-empty context and continuation")
        cache = self.new_cache()
        ctx = torch.tensor([context], dtype=torch.long)
        out = prefill(self.model, ctx, cache=cache, segment_size=self.segment_size)
        cont = torch.tensor([continuation], dtype=torch.long)
        scores = score_tokens(self.model, cont, cache, self.segment_size, prev_logits=out.logits)
        return float(scores.logprobs.sum()), bool(scores.greedy.all())

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        results = []
        for key, context, continuation in tqdm(requests, desc="loglikelihood", disable=disable_tqdm):
            result = self._score(context, continuation)
            self.cache_hook.add_partial("loglikelihood", key, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, each read once in segments after the prefix token."""
        results = []
        for request in tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm):
            (text,) = request.args
            ids = torch.tensor([[self.prefix_token_id, *self.tok_encode(text)]], dtype=torch.long)
            total = float(score_tokens(self.model, ids, self.new_cache(), self.segment_size).logprobs.sum())
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    # ---------------------------------------------------------------------------------------------- generation
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, if asked) continuations, cut at the first stop string."""
        results = []
        for request in tqdm(requests, desc="generate_until", disable=disable_tqdm):
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(kwargs.pop("do_sample", False))
            if not do_sample:
                kwargs.pop("temperature", None)
                kwargs.pop("top_p", None)
            ids = torch.tensor([self.tok_encode(context) or [self.prefix_token_id]], dtype=torch.long)
            out = generate(
                self.model, ids, cache=self.new_cache(), segment_size=self.segment_size,
                max_new_tokens=max_new, do_sample=do_sample, pad_token_id=self.eot_token_id, **kwargs,
            )
            text = self.tok_decode(out[0, ids.shape[1] :].tolist())
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            results.append(text)
        return results


def main() -> None:
    """lm-eval's command line with the ``lococo`` model type registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
