"""Store lambda = 0 exactly where a shipped head's lambda is the legacy clamp (issue 18), so its conv is skipped.

    python reports/training/exact_zero_lambda.py src/lococo/compressor/pretrained/smollm2-135m-m128
    python reports/training/exact_zero_lambda.py src/lococo/compressor/pretrained/smollm2-135m-m512 --below 1

Heads trained by lococo 0.1 kept lambda unconstrained; where it had gone below 0, loading put it at
``LEGACY_LAMBDA_EPS`` (1e-4) so that it could still train. At inference the intended value is the clamp, 0:
the fused slots are then the selected tokens (``lambda_init`` 0 stores ``lam_logit = -inf``, which no gradient
moves), and ``lococo_compress`` skips the conv of such a head (``ConvCompressorHead.selects_only``). The other
weights are written back unchanged, in the dtype they are stored in.

``--below X`` sets lambda to 0 wherever it is at most X; ``--below 1`` everywhere: the heads then select and
never mix (the conv weights stay in the file, so the trained lambdas can be restored from git history). That is
what the shipped M = 512 heads are, chosen on held-out perplexity against the trained lambdas (the two named
variants; reports/training/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

import lococo
from lococo.compressor.heads import LEGACY_LAMBDA_EPS
from lococo.compressor.heads_io import WEIGHTS_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--below", type=float, default=2 * LEGACY_LAMBDA_EPS,
                        help="lambda values at most this become 0 (default: the legacy clamp, rounded by bf16)")
    args = parser.parse_args()
    stored_dtype = next(iter(load_file(str(args.folder / WEIGHTS_NAME)).values())).dtype
    model, _ = lococo.load_model()
    heads = lococo.load_heads(model, args.folder)
    changed = []
    with torch.no_grad():
        for name, head in heads.heads.items():
            lam = float(head.lam)
            if lam <= args.below:
                head.lam_logit.fill_(float("-inf"))
                changed.append(f"layer {name}: {lam:.2e} -> 0")
    lococo.save_heads(model, args.folder, dtype=stored_dtype)
    print("\n".join(changed) or "no lambda at the legacy clamp", f"\n{len(changed)} of {len(heads.heads)} heads")


if __name__ == "__main__":
    main()
