import importlib.util
import shutil
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from htr_lightning.cli import cli_main
from htr_lightning.data import HTRDataModule
from htr_lightning.models import LLMAugmentedSystem, load_system

ROOT = Path(__file__).resolve().parents[2]
# 32 px lines on a 32×128 canvas (32 frames), two BiLSTM layers so that "first layer" means
# something, a connector scaled down with them, LoRA rank 2 on the tiny Llama.
TINY_LLM = dict(height=32, fixed_width=128, cnn_cfg=[[1, 4], "M", [1, 8]], lstm_hidden=4,
                lstm_layers=2, num_queries=4, qformer_positions=8, qformer_layers=1,
                qformer_heads=2, connector_hidden=16, lora_rank=2)


def _make_tiny_llama():
    """``examples/make_tiny_llama.py``, the script the CPU config names, as a module."""
    spec = importlib.util.spec_from_file_location("make_tiny_llama", ROOT / "examples" / "make_tiny_llama.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """A randomly initialised character-level Llama (no pad token, BOS added by its tokenizer,
    like Llama 3.2), saved the way a user's local model directory is."""
    model, tokenizer = _make_tiny_llama().build_tiny_llama(hidden=32)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def llm_dir(tmp_path, tiny_llama_dir):
    """A private copy, which a test may delete."""
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "llm"))


@pytest.fixture
def canvas_data(tiny_data_kwargs):
    return HTRDataModule(**{**tiny_data_kwargs, "fixed_width": 128})


def _model(data, llm, **kw):
    return LLMAugmentedSystem(data.charset, llm=str(llm), **{**TINY_LLM, **kw})


def _trainer(tmp_path, **kw):
    return pl.Trainer(**{**dict(max_steps=2, limit_val_batches=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=tmp_path), **kw})


def _batch(data):
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def test_hidden_size_comes_from_the_lm_config_and_is_stored(canvas_data, tiny_llama_dir):
    model = _model(canvas_data, tiny_llama_dir)
    assert model.hparams.llm_hidden_size == 32
    assert model.connector.expand[-1].out_features == 32
    assert model.llm is None  # nothing of the LM is loaded before fitting
    wrong = _model(canvas_data, tiny_llama_dir, llm_hidden_size=48)
    with pytest.raises(ValueError, match="hidden size 32"):
        wrong.setup("fit")


def test_lm_loss_trains_connector_adapters_and_the_features_under_them_not_the_lm(canvas_data,
                                                                                  tiny_llama_dir):
    torch.manual_seed(0)
    model = _model(canvas_data, tiny_llama_dir)
    model.setup("fit")
    batch = _batch(canvas_data)
    _, lengths, _, rnn_layers = model.training_forward(batch)
    lm = model.lm_loss(rnn_layers[0][:2], lengths[:2], batch["texts"][:2])
    assert torch.isfinite(lm) and lm > 0
    lm.backward()
    reached = {n for n, p in model.named_parameters() if p.grad is not None}
    connector = {n for n, _ in model.connector.named_parameters(prefix="connector")}
    adapters = {n for n, _ in model.llm.named_parameters(prefix="llm") if ".lora_" in n}
    lm_own = {n for n, _ in model.llm.named_parameters(prefix="llm")} - adapters
    assert adapters and connector | adapters <= reached
    assert not lm_own & reached and not any(p.requires_grad for n, p in model.named_parameters() if n in lm_own)
    assert float(model.connector.queries.grad.abs().sum()) > 0
    # In the recogniser, the LM loss reaches what lies under the first BiLSTM layer and nothing
    # above it: the later BiLSTM layers, the CTC head and the shortcut get no gradient from it.
    under = ("net.stem.", "net.blocks.", "net.lstm.forward_layers.0.", "net.lstm.backward_layers.0.")
    assert {n for n in reached if n.startswith("net.")} == {
        n for n, _ in model.net.named_parameters(prefix="net") if n.startswith(under)}


def test_lm_loss_detached_from_the_features_trains_only_connector_and_adapters(canvas_data,
                                                                               tiny_llama_dir):
    torch.manual_seed(0)
    model = _model(canvas_data, tiny_llama_dir, lm_trains_features=False)
    model.setup("fit")
    batch = _batch(canvas_data)
    model.sample_lines = lambda texts: [0, 1]
    losses = model.training_losses(batch, *model.training_forward(batch))
    assert torch.isfinite(losses["lm"]) and losses["lm"] > 0
    losses["lm"].backward()
    reached = {n for n, p in model.named_parameters() if p.grad is not None}
    connector = {n for n, _ in model.connector.named_parameters(prefix="connector")}
    adapters = {n for n, _ in model.llm.named_parameters(prefix="llm") if ".lora_" in n}
    assert adapters and reached == connector | adapters


def test_lm_sequence_follows_the_tokenizer_and_needs_no_pad_token(canvas_data, tiny_llama_dir):
    model = _model(canvas_data, tiny_llama_dir)
    model.setup("fit")
    tokenizer = model._llm_tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert tokenizer.pad_token is None and tokenizer("ab")["input_ids"][0] == bos
    seen = {}
    model.llm.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    texts = ["ab c", "x"]
    model.lm_loss(torch.rand(2, 6, 8), torch.tensor([6, 3]), texts)
    q = TINY_LLM["num_queries"]
    embed = model.llm.get_input_embeddings().weight
    for i, text in enumerate(texts):
        chars = tokenizer(text, add_special_tokens=False)["input_ids"]
        labels = seen["labels"][i]
        assert labels[labels != -100].tolist() == chars + [eos]  # the text once, then EOS
        assert (labels[: 1 + q] == -100).all()  # BOS and queries are not predicted
        assert int(seen["attention_mask"][i].sum()) == 1 + q + len(chars) + 1
        torch.testing.assert_close(seen["inputs_embeds"][i, 0], embed[bos])  # one BOS, first
        torch.testing.assert_close(seen["inputs_embeds"][i, 1 + q], embed[chars[0]])


def test_sampled_fraction_has_at_least_one_line_with_text(canvas_data, tiny_llama_dir):
    model = _model(canvas_data, tiny_llama_dir)
    assert len(model.sample_lines(["a"] * 16)) == 2  # 1/8 by default
    assert len(model.sample_lines(["a"] * 4)) == 1
    assert model.sample_lines(["", "", "b", ""]) == [2]
    assert model.sample_lines(["", ""]) == []


class _Watch(pl.Callback):
    """Copies of the LM's own weights at the start of training and of every trainable weight
    after the first validation (the sanity check included) that follows a training step."""

    def on_train_start(self, trainer, pl_module):
        self.lm_start = {n: p.detach().clone() for n, p in pl_module.named_parameters()
                         if n.startswith("llm.") and not pl_module.trains(n)}

    def on_validation_end(self, trainer, pl_module):
        if trainer.global_step and not hasattr(self, "after_validation"):
            self.after_validation = {n: p.detach().clone() for n, p in pl_module.named_parameters()
                                     if p.requires_grad}


@pytest.mark.parametrize("quantization", [None, "8bit"], ids=["full", "bnb-8bit"])
def test_fit_across_validation_trains_all_but_the_lm_which_stays_out_of_the_checkpoint(
        tmp_path, canvas_data, llm_dir, quantization):
    pl.seed_everything(0)
    model = _model(canvas_data, llm_dir, llm_quantization=quantization, weight_decay=0.0, lr=1e-2)
    watch = _Watch()
    trainer = _trainer(tmp_path, max_steps=4, val_check_interval=2, callbacks=[watch])
    trainer.fit(model, canvas_data)

    assert {"train_loss", "train_ctc", "train_ctc_shortcut", "train_lm"} <= set(trainer.callback_metrics)
    assert torch.isfinite(trainer.callback_metrics["train_lm"])
    lm_now = dict(model.named_parameters())
    assert watch.lm_start and all(torch.equal(v, lm_now[k]) for k, v in watch.lm_start.items())
    # every trainable weight still moves after validation ran under no_grad in eval mode
    unchanged = [n for n, v in watch.after_validation.items() if torch.equal(v, lm_now[n])]
    assert not unchanged
    assert any(".lora_" in n for n in watch.after_validation)

    ckpt = tmp_path / "llm.ckpt"
    trainer.save_checkpoint(ckpt)
    keys = set(torch.load(ckpt, weights_only=True)["state_dict"])
    assert keys == {k for k in model.state_dict() if model.trains(k)}
    assert all(".lora_" in k for k in keys if k.startswith("llm."))

    shutil.rmtree(llm_dir)  # inference needs no LM
    reloaded = LLMAugmentedSystem.load_from_checkpoint(ckpt)
    assert reloaded.llm is None
    image = canvas_data.samples("test")[0].load()
    assert reloaded.transcribe(image).text == model.transcribe(image).text


def test_an_lm_path_without_gradient_stops_the_fit(tmp_path, canvas_data, tiny_llama_dir, monkeypatch):
    model = _model(canvas_data, tiny_llama_dir)
    # seed 002's failure: an LM loss computed from something that carries no gradient
    monkeypatch.setattr(model.connector, "forward", lambda features, lengths: torch.zeros(len(features), 4, 32))
    with pytest.raises(RuntimeError, match="not back-propagating"):
        _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, canvas_data)


def test_4bit_is_refused_on_cpu_with_the_reason(canvas_data, tiny_llama_dir):
    model = _model(canvas_data, tiny_llama_dir, llm_quantization="4bit")
    with pytest.raises(ValueError, match="needs a CUDA device.*silently stops the gradients"):
        model.setup("fit")


def _cpu_has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _cpu_has_avx512_bf16(), reason="bitsandbytes repacks 4-bit weights for "
                    "inference only on CPUs with AVX512-BF16")
def test_the_reason_4bit_is_refused_on_cpu_still_holds(tmp_path):
    """The refusal above rests on a bitsandbytes behaviour; if this fails, a bitsandbytes
    release has fixed it and 4-bit LoRA on CPU can be allowed (and tested) again."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from htr_lightning.models.llm_augmented import quantization_config

    torch.manual_seed(0)
    # 128 wide: the repacking works on blocks of 64 input features (32 fails in bitsandbytes).
    model, _ = _make_tiny_llama().build_tiny_llama(hidden=128)
    model.save_pretrained(tmp_path)
    # The settings the model would load its LM with, were 4-bit allowed on CPU.
    llm = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization_config("4bit"),
                                               device_map="cpu")
    llm = get_peft_model(llm, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(3, 20, (2, 8))

    def adapters_with_gradients() -> int:
        llm.train()
        llm.zero_grad()
        llm(input_ids=ids, labels=ids).loss.backward()
        # Counts the adapters autograd reached (lora_A's gradient is zero while lora_B is at
        # its zero initialisation, so reached is the test, not non-zero).
        return sum(p.grad is not None for p in llm.parameters() if p.requires_grad)

    adapters = sum(p.requires_grad for p in llm.parameters())
    assert adapters > 0 and adapters_with_gradients() == adapters
    llm.eval()
    with torch.no_grad():  # what a validation pass does
        llm(input_ids=ids)
    assert adapters_with_gradients() == 0


def test_adapters_come_back_for_fitting_and_resuming_accepts_the_missing_lm(tmp_path, canvas_data,
                                                                            llm_dir):
    pl.seed_everything(0)
    steps = dict(limit_train_batches=2, limit_val_batches=0)  # checkpoints at an epoch's end
    trainer = _trainer(tmp_path, max_steps=2, **steps)
    trainer.fit(_model(canvas_data, llm_dir, scheduler="constant"), canvas_data)
    ckpt = tmp_path / "llm.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    lora = {k: v for k, v in saved.items() if ".lora_B" in k}
    assert lora and all(v.abs().sum() > 0 for v in lora.values())  # trained away from zero init

    reloaded = LLMAugmentedSystem.load_from_checkpoint(ckpt)
    reloaded.setup("fit")  # loads the LM and puts the checkpoint's adapters into it
    state = reloaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in lora.items())

    resumed = _trainer(tmp_path, max_steps=3, **steps)
    resumed.fit(_model(canvas_data, llm_dir, scheduler="constant"), canvas_data, ckpt_path=ckpt)
    assert resumed.global_step == 3


def test_cli_fit_with_the_tiny_config_then_validate_without_the_lm(tmp_path, monkeypatch, llm_dir):
    monkeypatch.setattr(sys, "argv", ["htr-lightning"])  # LightningCLI also looks at sys.argv
    config = ROOT / "configs" / "experiment" / "llm_tiny_synthetic.yaml"
    common = ["--config", str(config), f"--model.llm={llm_dir}", "--data.num_workers=0",
              '--data.synthetic_size={"train": 8, "val": 4, "test": 4}', "--data.batch_size=4",
              "--model.cnn_cfg=[[1, 4], M, [1, 8]]", "--model.lstm_hidden=4",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
              f"--trainer.default_root_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path / 'ckpt'}"]
    fit = cli_main(["fit", *common, "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                    "--trainer.log_every_n_steps=1"])
    assert "train_lm" in fit.trainer.callback_metrics
    last = tmp_path / "ckpt" / "last.ckpt"
    assert not any(k.startswith("llm.") and ".lora_" not in k
                   for k in torch.load(last, weights_only=True)["state_dict"])
    shutil.rmtree(llm_dir)
    val = cli_main(["validate", *common, f"--ckpt_path={last}"])
    assert "val_cer" in val.trainer.callback_metrics
    assert isinstance(load_system(last), LLMAugmentedSystem)
