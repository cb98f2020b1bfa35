"""LLM-augmented CTC: the best-practices CRNN plus a training-only path through a frozen causal
LM (SPEC section 5, seed 004)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from htr_lightning.models.best_practices import BestPracticesSystem
from htr_lightning.nets.best_practices import PAPER_CNN_CFG
from htr_lightning.nets.qformer import QFormerConnector

QUANTIZATIONS = (None, "4bit", "8bit")
IGNORE_INDEX = -100  # the label transformers' causal-LM loss skips


def quantization_config(kind: str | None):
    """The bitsandbytes loading settings for ``llm_quantization`` (one of
    :data:`QUANTIZATIONS`): NF4 with bf16 compute for "4bit", LLM.int8 for "8bit", None for
    full weights."""
    if kind is None:
        return None
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"unknown llm_quantization {kind!r}")


def lm_inputs(prefix: torch.Tensor, token_ids: Sequence[Sequence[int]], embedding: nn.Module,
              bos: int | None, eos: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs of a causal LM for ``[BOS] [prefix] [tokens] [EOS]``, right-padded.

    Only the tokens and EOS are labelled (BOS, prefix and padding are ``-100``); padding has
    attention mask 0, so no pad token is needed (Llama 3.2's tokenizer has none). BOS / EOS are
    left out where the LM has none. Built by hand because the prefix is embeddings, not token
    ids, which the tokenizers' padding and collators cannot place.

    Args:
        prefix: (B, Q, H) embeddings put in front of the text (the connector's queries).
        token_ids: B token-id lists of the texts, without special tokens.
        embedding: The LM's input embedding (``get_input_embeddings()``).
        bos: Begin-of-sequence id, or None.
        eos: End-of-sequence id, or None.

    Returns:
        inputs_embeds (B, L, H), attention_mask (B, L), labels (B, L) with
        L = [BOS] + Q + the longest text (+ EOS).

    >>> emb = nn.Embedding(10, 2)
    >>> _, mask, labels = lm_inputs(torch.zeros(2, 3, 2), [[5, 6], [7]], emb, bos=1, eos=2)
    >>> labels.tolist()
    [[-100, -100, -100, -100, 5, 6, 2], [-100, -100, -100, -100, 7, 2, -100]]
    >>> mask.tolist()
    [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]]
    """
    b, q, _ = prefix.shape
    texts = [list(t) + ([eos] if eos is not None else []) for t in token_ids]
    start = q + (bos is not None)  # where the text begins
    length = start + max(len(t) for t in texts)
    filler = eos if eos is not None else (bos if bos is not None else 0)  # masked, never seen
    ids = torch.full((b, length), filler, dtype=torch.long, device=prefix.device)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for i, text in enumerate(texts):
        end = start + len(text)
        ids[i, start:end] = torch.tensor(text, dtype=torch.long)
        labels[i, start:end] = ids[i, start:end]
        mask[i, :end] = 1
    if bos is not None:
        ids[:, 0] = bos
    embeds = embedding(ids)
    embeds = torch.cat([embeds[:, : start - q], prefix.to(embeds.dtype), embeds[:, start:]], dim=1)
    return embeds, mask, labels


def special_token_ids(tokenizer, config) -> tuple[int | None, int | None]:
    """BOS and EOS ids of a causal LM: the tokenizer's, else its model config's (the first one
    where the config lists several, as Llama 3 instruct models do).

    >>> from types import SimpleNamespace as NS
    >>> special_token_ids(NS(bos_token_id=None, eos_token_id=None), NS(bos_token_id=0, eos_token_id=[2, 9]))
    (0, 2)
    """
    def first(value):
        return value[0] if isinstance(value, (list, tuple)) else value

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else config.bos_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.eos_token_id
    return first(bos), first(eos)


class LLMAugmentedSystem(BestPracticesSystem):
    """Best-practices CRNN whose first BiLSTM layer also feeds a frozen causal LM in training.

    For a sampled fraction of each training batch (``llm_sample_ratio``, at least one line) the
    first BiLSTM layer's output goes through a :class:`~htr_lightning.nets.QFormerConnector`
    into ``[query embeddings ; transcription tokens]`` of the LM, whose causal-LM loss on the
    transcription tokens back-propagates through the connector into the recogniser.
    Loss = CTC + ``shortcut_weight`` · CTC_shortcut + ``lm_weight`` · LM, each term logged
    (``train_ctc``, ``train_ctc_shortcut``, ``train_lm``, ``train_loss``).

    The LM (``AutoModelForCausalLM`` from the local directory or hub name ``llm``) is loaded
    only when fitting starts, and runs in training mode like a PEFT fine-tuning (its own
    dropout, if any, and LoRA dropout are active). One predicate, :meth:`trains`, decides what
    trains and what a checkpoint keeps: the CTC network, the connector and the LoRA adapters,
    never the LM's own weights. Validation, ``predict`` and :meth:`transcribe` use the CTC head
    alone, so ``LLMAugmentedSystem.load_from_checkpoint(path)`` works without the LM.

    Args:
        llm: Local directory or hub name of the causal LM (and its tokenizer).
        llm_hidden_size: The LM's hidden size; None reads it from the LM's config (once; it is
            then stored with the hyperparameters, so checkpoints load without the LM).
        llm_dtype: dtype the LM is loaded in: "auto" (its config's), "float32", "bfloat16"
            or "float16".
        llm_quantization: None, "8bit" or "4bit" (bitsandbytes). 4-bit needs CUDA: on CPU,
            bitsandbytes 0.50 repacks 4-bit weights for inference after an eval-mode forward
            without gradients and then silently stops gradients through them.
        lm_weight: Weight α of the LM loss (0: plain best-practices training, no LM loaded).
        llm_sample_ratio: Fraction of each batch that goes through the LM.
        lm_trains_features: Let the LM loss reach, through the connector, the recogniser's
            features under it (the CNN and the first BiLSTM layer): that is how the LM shapes
            what the CTC head reads. False detaches the features, so the LM loss trains the
            connector and the LoRA adapters only (an ablation: the CTC net then learns from
            CTC alone).
        num_queries: Query tokens of the connector (embeddings handed to the LM).
        qformer_positions: Positions the features of a line are resampled to.
        qformer_layers: Q-Former layers.
        qformer_heads: Q-Former attention heads.
        connector_hidden: Hidden width of the expansion to the LM's hidden size.
        lora_rank: LoRA rank on the LM (peft); 0 keeps the LM entirely frozen.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: Dropout on the LoRA path.
        lora_target_modules: Module names LoRA adapts; None takes peft's default for the
            model type (``q_proj``, ``v_proj`` for Llama).

    The other arguments are those of :class:`BestPracticesSystem`.
    """

    def __init__(
        self,
        charset: str,
        llm: str,
        height: int = 128,
        fixed_width: int | None = 1024,
        cnn_cfg: Sequence[Sequence[int] | str] = PAPER_CNN_CFG,
        lstm_hidden: int = 256,
        lstm_layers: int = 3,
        dropout: float = 0.2,
        head_dropout: float = 0.5,
        shortcut_weight: float = 0.1,
        llm_hidden_size: int | None = None,
        llm_dtype: str = "auto",
        llm_quantization: str | None = None,
        lm_weight: float = 1.0,
        llm_sample_ratio: float = 0.125,
        lm_trains_features: bool = True,
        num_queries: int = 64,
        qformer_positions: int = 128,
        qformer_layers: int = 2,
        qformer_heads: int = 8,
        connector_hidden: int = 1024,
        lora_rank: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 5e-5,
        scheduler: str = "onecycle",
        warmup: float = 0.1,
        decoder: str | dict = "greedy",
    ) -> None:
        super().__init__(charset, height, fixed_width, cnn_cfg, lstm_hidden, lstm_layers, dropout,
                         head_dropout, shortcut_weight, lr, weight_decay, scheduler, warmup, decoder)
        self.save_hyperparameters()
        if llm_quantization not in QUANTIZATIONS:
            raise ValueError(f"llm_quantization must be one of {QUANTIZATIONS}, not {llm_quantization!r}")
        if llm_dtype != "auto" and not isinstance(getattr(torch, llm_dtype, None), torch.dtype):
            raise ValueError(f"llm_dtype {llm_dtype!r} is not a torch dtype name (or 'auto')")
        if lm_weight < 0 or not 0 < llm_sample_ratio <= 1:
            raise ValueError(f"need lm_weight >= 0 and 0 < llm_sample_ratio <= 1, got {lm_weight}, "
                             f"{llm_sample_ratio}")
        if llm_hidden_size is None:
            from transformers import AutoConfig

            llm_hidden_size = AutoConfig.from_pretrained(llm).get_text_config().hidden_size
            self.hparams["llm_hidden_size"] = llm_hidden_size
        self.connector = QFormerConnector(2 * lstm_hidden, llm_hidden_size, num_queries,
                                          qformer_positions, qformer_layers, qformer_heads,
                                          connector_hidden)
        self.register_module("llm", None)  # set by setup("fit")
        self._llm_tokenizer = None
        self._llm_special_ids: tuple[int | None, int | None] = (None, None)
        self._pending_llm_state: dict[str, torch.Tensor] = {}  # adapters read before the LM
        self._lm_ran = False
        self.register_load_state_dict_post_hook(self._allow_missing_frozen_llm)

    # ------------------------------------------------------------------ what trains
    @staticmethod
    def trains(name: str) -> bool:
        """The one predicate: whether a parameter or state entry (by its name in this module)
        is trained and saved. Everything is, except the LM, of which only LoRA adapters are.

        >>> [LLMAugmentedSystem.trains(name) for name in
        ...  ("net.stem.weight", "llm.lm_head.weight", "llm.base_model.model.q_proj.lora_A.default.weight")]
        [True, False, True]
        """
        return not name.startswith("llm.") or ".lora_" in name

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keeps what :meth:`trains` keeps: no weight of the LM enters the checkpoint."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if self.trains(k)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Without a loaded LM (inference), its adapter weights wait until fitting loads it."""
        super().on_load_checkpoint(checkpoint)
        if self.llm is None:
            state = checkpoint["state_dict"]
            self._pending_llm_state = {k: state.pop(k) for k in [k for k in state if k.startswith("llm.")]}

    def _allow_missing_frozen_llm(self, module: nn.Module, incompatible) -> None:
        # A checkpoint never holds the frozen LM weights; resuming with the LM loaded is no error.
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if self.trains(k)]

    # ------------------------------------------------------------------ the LM, for fitting
    def setup(self, stage: str) -> None:
        """Loads the LM, its tokenizer and the LoRA adapters when fitting starts."""
        if stage != "fit" or self.llm is not None or self.hparams.lm_weight == 0:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hp = self.hparams
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        if hp.llm_quantization == "4bit" and device.type != "cuda":
            raise ValueError(
                "llm_quantization='4bit' needs a CUDA device: on CPU, bitsandbytes 0.50 repacks "
                "4-bit weights for inference after any forward pass without gradients "
                "(validation, generate) and then silently stops the gradients to the connector "
                "and adapters. Use llm_quantization='8bit' or None on CPU.")
        llm = AutoModelForCausalLM.from_pretrained(
            hp.llm, dtype=hp.llm_dtype if hp.llm_dtype == "auto" else getattr(torch, hp.llm_dtype),
            quantization_config=quantization_config(hp.llm_quantization), device_map={"": device})
        hidden = llm.config.get_text_config().hidden_size
        if hidden != hp.llm_hidden_size:
            raise ValueError(f"{hp.llm} has hidden size {hidden}, but this model's connector was "
                             f"built for {hp.llm_hidden_size}")
        if hp.lora_rank:
            from peft import LoraConfig, get_peft_model

            llm = get_peft_model(llm, LoraConfig(
                r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                target_modules=hp.lora_target_modules, task_type="CAUSAL_LM"))
        for name, param in llm.named_parameters(prefix="llm"):
            param.requires_grad_(self.trains(name))
        if self._pending_llm_state:
            own = {k.removeprefix("llm."): v for k, v in self._pending_llm_state.items()}
            unexpected = llm.load_state_dict(own, strict=False).unexpected_keys
            if unexpected:
                raise ValueError(f"the checkpoint's LM adapters do not fit {hp.llm} with this LoRA "
                                 f"configuration: {unexpected[:3]}")
            self._pending_llm_state = {}
        # from_pretrained returns the LM in eval mode, and Lightning keeps each submodule's
        # mode; like PEFT fine-tuning, the LM trains in training mode (LoRA dropout active).
        self.llm = llm.train()
        self._llm_tokenizer = AutoTokenizer.from_pretrained(hp.llm)
        self._llm_special_ids = special_token_ids(self._llm_tokenizer, llm.config)

    # ------------------------------------------------------------------ losses
    def sample_lines(self, texts: Sequence[str]) -> list[int]:
        """Indices of the lines that go through the LM: ``llm_sample_ratio`` of the batch
        (rounded, at least one), drawn from the lines with a transcription."""
        candidates = [i for i, text in enumerate(texts) if text]
        k = min(len(candidates), max(1, round(len(texts) * self.hparams.llm_sample_ratio)))
        return [candidates[i] for i in torch.randperm(len(candidates))[:k].tolist()]

    def lm_loss(self, features: torch.Tensor, lengths: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Causal-LM loss of the transcriptions given the connector's query embeddings.

        Args:
            features: (N, T, 2·lstm_hidden) first BiLSTM layer output of N lines.
            lengths: (N,) valid frames.
            texts: N transcriptions.

        Returns:
            The mean cross-entropy over the transcription tokens (and EOS).
        """
        prefix = self.connector(features, lengths)  # (N, Q, hidden)
        ids = [self._llm_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        embeds, mask, labels = lm_inputs(prefix, ids, self.llm.get_input_embeddings(),
                                         *self._llm_special_ids)
        return self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels,
                        use_cache=False).loss

    def training_losses(self, batch: dict, log_probs: torch.Tensor, lengths: torch.Tensor,
                        shortcut_log_probs: torch.Tensor, rnn_layers: list[torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
        """The best-practices terms, plus ``lm`` when the LM is loaded."""
        losses = super().training_losses(batch, log_probs, lengths, shortcut_log_probs, rnn_layers)
        if self.llm is None or "loss" not in losses:
            return losses
        lines = self.sample_lines(batch["texts"])
        if not lines:
            return losses
        chosen = torch.tensor(lines, device=lengths.device)
        features = rnn_layers[0][chosen]
        if not self.hparams.lm_trains_features:
            features = features.detach()
        lm = self.lm_loss(features, lengths[chosen], [batch["texts"][i] for i in lines])
        self._lm_ran = True
        return {**losses, "loss": losses["loss"] + self.hparams.lm_weight * lm, "lm": lm}

    def on_after_backward(self) -> None:
        """Fails loudly when the LM loss ran but left a connector or adapter weight without a
        gradient (seed 002's loss that "cannot back-propagate", or quantized weights that stop
        gradients) instead of training on silently without it."""
        if not self._lm_ran:
            return
        self._lm_ran = False
        stuck = [n for n, p in self.named_parameters()
                 if p.requires_grad and p.grad is None and n.startswith(("connector.", "llm."))]
        if stuck:
            raise RuntimeError(f"the LM loss gave no gradient to {len(stuck)} trainable weights "
                               f"(e.g. {stuck[0]}); the LM path is not back-propagating")
