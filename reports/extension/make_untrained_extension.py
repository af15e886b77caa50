"""An extension folder with no training: RoPE scaling + zero-initialised LoRA + the shipped M = 512 heads.

    python reports/extension/make_untrained_extension.py --rope-scaling yarn --output runs/yarn32k_untrained

It measures what a RoPE scaling gives before any adaptation (run_extension.sh eval-untrained-yarn).
"""

from __future__ import annotations

import argparse

import lococo
from lococo.extension import add_lora, apply_rope_scaling, save_extended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extend-to", type=int, default=32768)
    parser.add_argument("--rope-scaling", default="yarn", choices=("linear", "yarn", "dynamic"))
    parser.add_argument("--mem-size", type=int, default=512)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    model, _ = lococo.load_model()
    apply_rope_scaling(model, args.extend_to, args.rope_scaling)
    lococo.load_heads(model, lococo.shipped_heads(model, args.mem_size))
    lora = add_lora(model)  # peft initialises B to zero: the adapter changes nothing
    print(save_extended(model, args.output, lora_config=lora))


if __name__ == "__main__":
    main()
