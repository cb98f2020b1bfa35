"""Parameter counts and weight-memory arithmetic of the Llama 3.2 configs (no weights needed).

The LMs are built on PyTorch's meta device from the architecture values of Meta's published
``config.json`` files (written out below), so nothing is downloaded or allocated. Memory figures
are arithmetic, parameter count × bytes per parameter, for the weights alone: activations,
the optimiser state of the trainable parts and the CUDA context come on top and are not
measured here.

    python benchmarks/llm_sizes.py [--lora-rank 16] [--batch 16] [--tokens 30]
"""

from __future__ import annotations

import argparse

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from htr_lightning.nets import BestPracticesCRNN, QFormerConnector
from htr_lightning.nets.best_practices import PAPER_CNN_CFG, SEED004_CNN_CFG

LLAMA_32 = {  # architecture values of meta-llama/Llama-3.2-{1B,3B}/config.json
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64),
    "Llama-3.2-3B": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128),
}
GB = 1e9


def main() -> None:
    """Prints one block per LM and the recogniser's own counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--ratio", type=float, default=0.125)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=30, help="LM tokens of one transcription")
    parser.add_argument("--classes", type=int, default=80)
    args = parser.parse_args()
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    paper, seed004 = (count(BestPracticesCRNN(args.classes, cnn_cfg=c)) for c in (PAPER_CNN_CFG, SEED004_CNN_CFG))
    print(f"best-practices CRNN ({args.classes} classes): paper cnn_cfg {paper:,}, "
          f"seed 004 cnn_cfg (MobileViT) {seed004:,}")
    lines = max(1, round(args.batch * args.ratio))
    positions = lines * (1 + args.queries + args.tokens + 1)
    for name, arch in LLAMA_32.items():
        config = LlamaConfig(vocab_size=128256, tie_word_embeddings=True, **arch)
        with torch.device("meta"):
            llm = LlamaForCausalLM(config)
            connector = count(QFormerConnector(512, config.hidden_size, num_queries=args.queries))
            total = count(llm)
            # bitsandbytes quantizes the decoder's Linear layers; embeddings (tied to the
            # output layer) and norms stay in 16 bits.
            linear = sum(m.weight.numel() for n, m in llm.named_modules()
                         if isinstance(m, nn.Linear) and n != "lm_head")
            lora = get_peft_model(llm, LoraConfig(r=args.lora_rank, task_type="CAUSAL_LM"))
            adapters = sum(p.numel() for p in lora.parameters() if p.requires_grad)
        rest = total - linear
        print(f"\n{name}: {total:,} parameters ({linear:,} in decoder Linear layers), "
              f"hidden size {config.hidden_size}")
        print(f"  weights, arithmetic: bf16 {total * 2 / GB:.2f} GB; 8-bit {(linear + rest * 2) / GB:.2f} GB; "
              f"4-bit NF4 {(linear * 0.5 + rest * 2) / GB:.2f} GB (+ ~{linear / 64 * 4 / GB:.2f} GB of "
              "fp32 block scales, 1 per 64 weights, less with double quantization)")
        print(f"  connector (Q-Former 2 layers, {args.queries} queries, 512 -> 1024 -> "
              f"{config.hidden_size}): {connector:,} parameters")
        print(f"  LoRA r={args.lora_rank} on peft's Llama default (q_proj, v_proj): {adapters:,} parameters")
        print(f"  LM logits of one step, fp32, arithmetic: {lines} lines x {positions // lines} positions "
              f"x {config.vocab_size:,} = {positions * config.vocab_size * 4 / GB:.3f} GB")


if __name__ == "__main__":
    main()
