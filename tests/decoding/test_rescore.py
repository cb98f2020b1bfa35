import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from htr_lightning.decoding import CausalLMScorer, RescoringDecoder, build_decoder
from htr_lightning.text import CTCTokenizer

CHARSET = " acehtx"


def _tiny_lm(path, favourite="the cat"):
    """A character-level GPT-2 taught one line, saved like a user's local model directory."""
    vocab = {c: i for i, c in enumerate(["<eos>", *CHARSET])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", bos_token="<eos>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=16,
                                       n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0))
    ids = torch.tensor([[0, *tokenizer(favourite)["input_ids"], 0]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_scorer_loads_a_local_directory_and_prefers_what_it_learned(tmp_path):
    scorer = CausalLMScorer(_tiny_lm(tmp_path / "lm"), batch_size=2)
    scores = scorer(["the cat", "tha cet", "x"])
    assert scores[0] > scores[1] and scores[0] > scores[2]
    alone = scorer(["tha cet"])  # padding in a batch does not change a line's score
    assert abs(alone[0] - scores[1]) < 1e-4


def test_rescoring_overturns_an_ambiguous_beam(tmp_path):
    path = _tiny_lm(tmp_path / "lm")
    tok = CTCTokenizer(CHARSET)
    # frames spell "th?" + " cat" where '?' is 'a' (0.55) or 'e' (0.45)
    frames = ["t", "h", "ae", " ", "c", "a", "t"]
    log_probs = torch.full((1, len(frames), len(CHARSET) + 1), 1e-4)
    for t, symbols in enumerate(frames):
        for symbol, p in zip(symbols, (0.55, 0.45) if len(symbols) == 2 else (1.0,)):
            log_probs[0, t, CHARSET.index(symbol) + 1] = p
    log_probs = (log_probs / log_probs.sum(-1, keepdim=True)).log()
    lengths = torch.tensor([len(frames)])
    plain = RescoringDecoder(path, weight=0.0, nbest=4, beam={"beam_size": 4})
    assert plain(log_probs, lengths, tok)[0].text == "tha cat"
    rescored = build_decoder(RescoringDecoder(path, weight=1.0, nbest=4, beam={"beam_size": 4}).config())
    assert rescored(log_probs, lengths, tok)[0].text == "the cat"
