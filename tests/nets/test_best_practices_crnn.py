import pytest
import torch

from htr_lightning.nets import BestPracticesCRNN, QFormerConnector
from htr_lightning.nets.best_practices import PAPER_CNN_CFG, SEED004_CNN_CFG
from htr_lightning.nets.qformer import resample_frames

TINY = dict(height=32, cnn_cfg=[[1, 4], "M", [1, 8]], lstm_hidden=4, lstm_layers=2)


def count(net):
    return sum(p.numel() for p in net.parameters())


def expected_parameters(cnn_cfg, classes, hidden=256, layers=3, stem=32):
    """The paper network's parameters by formula: a k×k convolution has k²·in·out weights
    (+ out biases, only the stem has them), BatchNorm 2·C, a BasicBlock two 3×3 convolutions
    with BatchNorm plus a 1×1 convolution + BatchNorm when the channels change; an LSTM
    direction of a layer 4h·(in + h) + 8h (two bias vectors); the head Linear(2h, classes);
    the shortcut a 1×3 convolution over C channels with bias."""
    total, channels = 49 * stem + stem, stem
    for entry in cnn_cfg:
        if entry == "M":
            continue
        for _ in range(entry[0]):
            out = entry[1]
            total += 9 * channels * out + 2 * out + 9 * out * out + 2 * out
            if channels != out:
                total += channels * out + 2 * out
            channels = out
    lstm_in = [channels] + [2 * hidden] * (layers - 1)
    total += sum(2 * (4 * hidden * (n + hidden) + 8 * hidden) for n in lstm_in)
    return total + (2 * hidden * classes + classes) + (3 * channels * classes + classes)


def test_paper_configuration_parameter_count():
    net = BestPracticesCRNN(80)
    print(f"best-practices CRNN, 80 classes: {count(net):,} parameters")
    assert count(net) == expected_parameters(PAPER_CNN_CFG, 80) == 10_019_936
    rework = [[2, 64], "M", [3, 128], "M", [2, 256]]
    assert count(BestPracticesCRNN(80, cnn_cfg=rework)) == expected_parameters(rework, 80)


def test_paper_canvas_gives_128_frames_of_8_pixels():
    net = BestPracticesCRNN(20, **{**TINY, "height": 128, "cnn_cfg": [[1, 4], "M", [1, 4], "M", [1, 8]]})
    log_probs, lengths = net(torch.zeros(1, 1, 128, 1024), torch.tensor([1000]))
    assert log_probs.shape == (1, 128, 20)
    assert lengths.tolist() == [125]  # 1000 px: 500 stem columns, 250, 125 frames
    assert net.output_lengths(torch.tensor([1024, 17, 8])).tolist() == [128, 2, 1]


@pytest.mark.parametrize("cnn_cfg", [TINY["cnn_cfg"], [[1, 4], "M", "mobilevit2", [1, 8]]],
                         ids=["resnet", "mobilevit"])
def test_padding_does_not_change_a_line(cnn_cfg):
    torch.manual_seed(0)
    net = BestPracticesCRNN(10, **{**TINY, "cnn_cfg": cnn_cfg}).eval()
    images = torch.rand(3, 1, 32, 96)
    widths = torch.tensor([96, 37, 61])
    for i, w in enumerate(widths.tolist()):
        images[i, ..., w:] = 0
    with torch.no_grad():
        batch = net.forward_all(images, widths)
        for i, w in enumerate(widths.tolist()):
            alone = net.forward_all(images[i : i + 1, ..., :w], widths[i : i + 1])
            n = int(alone.lengths[0])
            assert int(batch.lengths[i]) == n
            for got, want in [(batch.log_probs, alone.log_probs), (batch.shortcut_log_probs,
                              alone.shortcut_log_probs), (batch.rnn_layers[0], alone.rnn_layers[0])]:
                torch.testing.assert_close(got[i, :n], want[0, :n], atol=1e-5, rtol=0)


def test_forward_all_shapes_and_forward_is_its_recurrent_head():
    net = BestPracticesCRNN(10, **TINY).eval()
    images = torch.rand(2, 1, 32, 64)
    out = net.forward_all(images)
    assert out.log_probs.shape == out.shortcut_log_probs.shape == (2, 16, 10)
    assert [r.shape for r in out.rnn_layers] == [(2, 16, 8), (2, 16, 8)]
    assert out.lengths.tolist() == [16, 16]
    log_probs, lengths = net(images)
    assert torch.equal(log_probs, out.log_probs) and torch.equal(lengths, out.lengths)


def test_seed004_layout_builds_at_the_paper_canvas():
    net = BestPracticesCRNN(80, cnn_cfg=SEED004_CNN_CFG)
    print(f"seed 004 layout: {count(net):,} parameters")
    assert sum(type(m).__name__ == "MobileViTBlock" for m in net.blocks) == 2


@pytest.mark.parametrize("cnn_cfg, message", [
    ([[1, 4], "X"], "expected"),
    ([[1, 4], "mobilevit3"], "does not divide"),
    ([[1, 4], "M", "M", "M", "M"], "odd feature height"),
])
def test_bad_configurations_are_named(cnn_cfg, message):
    with pytest.raises(ValueError, match=message):
        BestPracticesCRNN(10, height=32, cnn_cfg=cnn_cfg)


def test_resampling_uses_only_valid_frames():
    features = torch.arange(12.0).reshape(2, 6, 1)
    out = resample_frames(features, torch.tensor([3, 1]), 5)
    assert out[0, :, 0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert out[1, :, 0].tolist() == [6.0] * 5


def test_connector_maps_lines_to_queries_of_the_lm_width():
    torch.manual_seed(0)
    connector = QFormerConnector(8, 24, num_queries=5, positions=7, layers=1, heads=2, expand_dim=16).eval()
    features = torch.rand(2, 10, 8)
    out = connector(features, torch.tensor([10, 4]))
    assert out.shape == (2, 5, 24)
    changed = features.clone()
    changed[1, 4:] = 100.0  # padding frames of the second line
    torch.testing.assert_close(connector(changed, torch.tensor([10, 4]))[1], out[1])
