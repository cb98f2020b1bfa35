"""Writes a tiny Llama (``LlamaForCausalLM`` + tokenizer) for the CPU LLM-augmented config.

    python examples/make_tiny_llama.py                    # -> checkpoints/tiny_llama
    python examples/make_tiny_llama.py --train-steps 0    # random weights, instant

The tokenizer is character-level over the synthetic charset and follows Llama 3.2's
conventions: ``<|begin_of_text|>`` added in front by the tokenizer itself, ``<|end_of_text|>``
as EOS, and no pad token. By default the model is then trained for a few hundred steps on
synthetic transcriptions (text only, no images), so that its loss means something; nothing is
downloaded. The directory loads with ``AutoModelForCausalLM.from_pretrained``, like a real one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from htr_lightning.data.synthetic import SYNTHETIC_CHARSET, SyntheticLines

BOS, EOS, UNK = "<|begin_of_text|>", "<|end_of_text|>", "<unk>"


def build_tiny_llama(charset: str = SYNTHETIC_CHARSET, hidden: int = 64, layers: int = 2,
                     seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised character-level Llama and its tokenizer (no pad token).

    Args:
        charset: Characters the tokenizer knows (one token each).
        hidden: Hidden size.
        layers: Decoder layers.
        seed: Initialisation seed.
    """
    vocab = {token: i for i, token in enumerate([BOS, EOS, UNK, *charset])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A",
                                                        special_tokens=[(BOS, vocab[BOS])])
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS,
                                        unk_token=UNK)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=vocab[BOS],
                         eos_token_id=vocab[EOS], tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tokenizer


def pretrain(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, texts: list[str],
             steps: int, batch_size: int = 32, lr: float = 3e-3) -> list[float]:
    """Trains the model on ``BOS text EOS`` sequences; returns the loss of every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    eos = tokenizer.eos_token_id
    losses = []
    model.train()
    for step in range(steps):
        chunk = [texts[(step * batch_size + i) % len(texts)] for i in range(batch_size)]
        seqs = [tokenizer(t)["input_ids"] + [eos] for t in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [eos] * (width - len(s)) for s in seqs])
        labels = torch.tensor([s + [-100] * (width - len(s)) for s in seqs])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    """Builds, optionally trains, and saves the tiny Llama."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="checkpoints/tiny_llama")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # Matrices this small gain nothing from threads; on a busy 2-core machine one training step
    # took 0.04 s with one thread and 1-3 s with two.
    torch.set_num_threads(1)
    model, tokenizer = build_tiny_llama(hidden=args.hidden, layers=args.layers, seed=args.seed)
    if args.train_steps:
        # Different lines from the ones the recogniser trains on (seed + 1), text only.
        texts = [s.text for s in SyntheticLines(20000, split="train", seed=args.seed + 1, max_words=3)]
        start = time.time()
        losses = pretrain(model, tokenizer, texts, args.train_steps)
        print(f"trained {args.train_steps} steps in {time.time() - start:.0f} s: loss "
              f"{sum(losses[:10]) / 10:.2f} (first 10 steps) -> {sum(losses[-10:]) / 10:.2f} (last 10)")
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {Path(args.output)}: {params:,} parameters, hidden size {model.config.hidden_size}")


if __name__ == "__main__":
    main()
