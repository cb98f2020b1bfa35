import pytest
import torch

from htr_lightning.nets import GatedCRNN

TINY = dict(channels=(4, 8, 8, 8, 8), lstm_hidden=8, lstm_layers=1, heads=1, se_reduction=2)


def test_teacher_parameter_count_against_spec():
    net = GatedCRNN(num_classes=80)  # the SPEC section 2 design at height 64
    n = sum(p.numel() for p in net.parameters())
    print(f"teacher parameters: {n:,} (seed 001 reports 7.6 M; SPEC's count of this design ~3.2 M)")
    assert 3.15e6 < n < 3.3e6


def test_output_shape_and_lengths():
    net = GatedCRNN(num_classes=10, height=32, **TINY)
    log_probs, lengths = net(torch.rand(2, 1, 32, 100), torch.tensor([100, 57]))
    assert log_probs.shape == (2, 12, 10)
    assert lengths.tolist() == [12, 7]
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 12), atol=1e-5)


def test_batch_of_four_equals_four_batches_of_one():
    torch.manual_seed(0)
    net = GatedCRNN(num_classes=10, height=32, **TINY).eval()
    widths = torch.tensor([160, 96, 41, 130])
    images = torch.rand(4, 1, 32, 160)
    for i, w in enumerate(widths):
        images[i, :, :, w:] = 0
    with torch.no_grad():
        batched, lengths = net(images, widths)
        for i, w in enumerate(widths):
            single, n = net(images[i : i + 1, :, :, :w])
            assert n.item() == lengths[i].item()
            assert torch.allclose(single[0], batched[i, : n.item()], atol=1e-6)


def test_height_must_fit_the_pooling():
    with pytest.raises(ValueError, match="not divisible"):
        GatedCRNN(num_classes=5, height=40)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)  # a 1-2 unit SE bottleneck can start as a dead ReLU for some seeds
    net = GatedCRNN(num_classes=6, height=32, **TINY)
    log_probs, _ = net(torch.rand(2, 1, 32, 64))
    log_probs[..., 1:].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_feature_and_head_dropout_act_in_training_only_and_add_no_weights():
    torch.manual_seed(0)
    plain = GatedCRNN(num_classes=10, height=32, **TINY)
    dropped = GatedCRNN(num_classes=10, height=32, feature_dropout=0.5, head_dropout=0.5, **TINY)
    # No new parameters: a checkpoint of the SPEC network loads into a regularised one and back.
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    dropped.load_state_dict(plain.state_dict())
    images = torch.rand(2, 1, 32, 100)
    plain.eval(), dropped.eval()
    with torch.no_grad():
        assert torch.equal(plain(images)[0], dropped(images)[0])
    dropped.train()
    plain.train()
    torch.manual_seed(1)
    first = dropped(images)[0]
    torch.manual_seed(2)
    second = dropped(images)[0]
    torch.manual_seed(1)
    assert not torch.allclose(first, second)
    # Both rates must be wired in: each one alone changes the training output of the plain net.
    for rates in ({"feature_dropout": 0.5}, {"head_dropout": 0.5}):
        one = GatedCRNN(num_classes=10, height=32, **rates, **TINY)
        one.load_state_dict(plain.state_dict())
        torch.manual_seed(3)
        reference = plain(images)[0]
        torch.manual_seed(3)
        assert not torch.allclose(one(images)[0], reference), rates
