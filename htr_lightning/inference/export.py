"""Export a trained CTC system to standalone files (a training checkpoint is not a deployment
artefact: it carries optimiser state and needs this package's classes and Lightning to load).

Two formats, each with the same metadata (:func:`export_metadata`: charset, blank, input
height and preprocessing, decoder, the system's class path and hyperparameters, the package
version):

* **ONNX**: ``model.onnx`` (inputs ``images`` float32 (B, 1, H, W) and ``widths`` int64 (B,);
  outputs ``log_probs`` (B, T, C) and ``lengths`` (B,); batch and width dynamic) plus the
  sidecar ``model.json``. Runs in onnxruntime without PyTorch models or Lightning
  (:class:`~htr_lightning.inference.runtime.OnnxRecognizer`). Every export is checked against
  PyTorch on a padded batch of another size and width before it is kept.
* **safetensors bundle**: a directory with ``model.safetensors`` (the state dict: tensors only,
  no pickled code) and ``config.json``; :func:`load_bundle` rebuilds the system from it.

Command line::

    htr-lightning export --ckpt_path best.ckpt --format onnx --output model.onnx
    htr-lightning export --ckpt_path best.ckpt --format safetensors --output model_dir/

A :class:`~htr_lightning.models.trocr.TrOCRSystem` checkpoint exports to a transformers folder
instead (``--format transformers``: ``VisionEncoderDecoderModel`` with LoRA merged, tokenizer,
image processor and generation settings, see ``TrOCRSystem.export_pretrained``).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import lightning.pytorch
import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file, save_file

import htr_lightning
from htr_lightning.checkpoints import UnsafeCheckpointError, load_checkpoint_file
from htr_lightning.data.batching import WIDTH_MULTIPLE
from htr_lightning.inference.runtime import FORMAT, FORMAT_VERSION, read_metadata, sidecar_path
from htr_lightning.models import CTCSystem, load_system, resolve_system_class
from htr_lightning.text import BLANK

OPSET = 17
INPUTS = ("images", "widths")
OUTPUTS = ("log_probs", "lengths")
BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_CONFIG = "config.json"


def export_metadata(system: CTCSystem) -> dict:
    """Everything needed to use an exported network, as plain JSON values.

    Keys: ``format``, ``format_version``, ``htr_lightning_version``, ``class_path``,
    ``hyperparameters`` (the system's, without Lightning CLI entries such as ``_class_path``),
    ``charset``, ``blank``, ``num_classes``, ``preprocessing`` (``height``, ``fixed_width``,
    ``max_width``, ``min_width``, ``width_multiple``, ``rectify`` (PAGE-XML lines straightened
    along their baselines, as the model trained), and the fixed conventions: grayscale, dark
    ink on light paper normalised, ink = 1, background = 0, right padding) and ``decoder`` (its
    config dict).

    Raises:
        TypeError: A hyperparameter is not a plain JSON value.
    """
    cls = type(system)
    hparams = {k: v for k, v in dict(system.hparams).items() if not k.startswith("_")}
    try:
        hparams = json.loads(json.dumps(hparams))  # tuples -> lists; fails on non-plain values
    except TypeError as err:
        raise TypeError(f"{cls.__name__} has a hyperparameter that is not a plain value: "
                        f"{err}") from None
    pre = system.preprocess
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "htr_lightning_version": htr_lightning.__version__,
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "hyperparameters": hparams,
        "charset": system.tokenizer.charset,
        "blank": BLANK,
        "num_classes": len(system.tokenizer),
        "preprocessing": {
            "height": pre.height,
            "fixed_width": pre.fixed_width,
            "max_width": pre.max_width,
            "min_width": pre.min_width,
            "width_multiple": WIDTH_MULTIPLE,
            "rectify": system.rectified_lines,
            "grayscale": True,
            "polarity": "dark ink on light background, inverted when the median is below 128",
            "ink": 1.0,
            "background": 0.0,
            "padding": "right, zeros",
        },
        "decoder": system.decoder.config(),
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _check_batches(height: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic random batches for the parity check: one unpadded line, and three lines of
    different widths padded together (neither batch size nor width is the trace's)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for widths in ([160], [224, 131, 16]):
        images = torch.rand(len(widths), 1, height, max(widths), generator=g)
        for i, w in enumerate(widths):
            images[i, :, :, w:] = 0
        out.append((images.to(device), torch.tensor(widths, device=device)))
    return out


def onnx_max_difference(system: CTCSystem, path: str | Path,
                        batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Largest absolute difference of ``log_probs`` between PyTorch and onnxruntime.

    Args:
        system: The exported system.
        path: Its ONNX file.
        batches: (images (B, 1, H, W), widths (B,)) pairs.

    Raises:
        RuntimeError: The two disagree on the frame counts (``lengths``) or the output shape.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.inference_mode():
        for images, widths in batches:
            ref, ref_lengths = system(images, widths)
            got, lengths = session.run(list(OUTPUTS), {"images": images.cpu().numpy(),
                                                       "widths": widths.cpu().numpy()})
            same_lengths = np.array_equal(lengths, ref_lengths.cpu().numpy())
            if got.shape != tuple(ref.shape) or not same_lengths:
                raise RuntimeError(f"{path}: onnxruntime gives log_probs {got.shape} with lengths "
                                   f"{lengths.tolist()}, PyTorch {tuple(ref.shape)} with "
                                   f"{ref_lengths.tolist()}")
            worst = max(worst, float(np.abs(got - ref.float().cpu().numpy()).max()))
    return worst


def export_onnx(system: CTCSystem, path: str | Path, atol: float = 1e-4) -> Path:
    """Writes the system's network as ONNX, its sidecar beside it, and checks the export.

    Args:
        system: A trained CTC system (left in the train/eval mode it was in).
        path: The ``.onnx`` file to write; the sidecar is :func:`sidecar_path` of it.
        atol: Largest accepted difference of log-probabilities between PyTorch and onnxruntime
            on the check batches (padded, of a batch size and width the trace never saw).

    Returns:
        The ONNX path.

    Raises:
        RuntimeError: The exported graph disagrees with PyTorch (nothing is left on disk).
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"ONNX output must end in .onnx, not {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    height = system.preprocess.height
    was_training = system.training
    system.eval()
    try:
        example = (torch.rand(1, 1, height, 4 * WIDTH_MULTIPLE, device=system.device),
                   torch.tensor([4 * WIDTH_MULTIPLE], device=system.device))
        # The TorchScript exporter (dynamo=False), not torch.export: in torch 2.13 the dynamo
        # exporter freezes the time axis of a bidirectional LSTM whose output is reversed with a
        # gather (pytorch/pytorch#191855: the model then fails on lines of any other width), and
        # it took 77 s against 3 s on the tiny test net. The tracer warns about every Python
        # branch it sees (torch's own LSTM and ours), and the LSTM export warns, for every LSTM,
        # that another batch size than the trace's may fail; the parity check below, on other
        # batch sizes and widths, is what tells whether the trace generalises, so those two
        # warnings are not shown.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other "
                                    "than 1", UserWarning)
            torch.onnx.export(
                system, example, str(path), input_names=list(INPUTS), output_names=list(OUTPUTS),
                dynamic_axes={"images": {0: "batch", 3: "width"}, "widths": {0: "batch"},
                              "log_probs": {0: "batch", 1: "frames"}, "lengths": {0: "batch"}},
                opset_version=OPSET, dynamo=False)
        diff = onnx_max_difference(system, path, _check_batches(height, system.device))
        if not diff <= atol:
            raise RuntimeError(f"{path}: onnxruntime log_probs differ from PyTorch by {diff:.2e} "
                               f"(more than {atol:.0e})")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        system.train(was_training)
    meta = export_metadata(system)
    meta["onnx"] = {"opset": OPSET, "inputs": list(INPUTS), "outputs": list(OUTPUTS),
                    "parity_max_abs_diff": diff}
    _write_json(sidecar_path(path), meta)
    return path


def export_bundle(system: CTCSystem, directory: str | Path) -> Path:
    """Writes ``model.safetensors`` (the state dict) and ``config.json`` into ``directory``.

    Returns:
        The directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in system.state_dict().items()}
    save_file(state, str(directory / BUNDLE_WEIGHTS), metadata={"format": "pt"})
    _write_json(directory / BUNDLE_CONFIG, export_metadata(system))
    return directory


def load_bundle(directory: str | Path, map_location: str | torch.device = "cpu") -> CTCSystem:
    """Rebuilds a system from :func:`export_bundle`'s directory, in eval mode.

    The class comes from ``config.json``'s ``class_path`` and must be one of
    :mod:`htr_lightning.models` (see :func:`~htr_lightning.models.resolve_system_class`); it is
    built from the stored hyperparameters and given the stored weights (all of them, strictly).
    """
    directory = Path(directory)
    meta = read_metadata(directory / BUNDLE_CONFIG)
    cls = resolve_system_class(meta["class_path"])
    system = cls(**meta["hyperparameters"])
    system.load_state_dict(load_file(str(directory / BUNDLE_WEIGHTS), device=str(map_location)))
    system.rectified_lines = bool(meta["preprocessing"].get("rectify", False))
    return system.to(map_location).eval()


def load_checkpoint(path: str | Path, weights_only: bool | None = None
                    ) -> lightning.pytorch.LightningModule:
    """Loads an htr_lightning training checkpoint, with plain errors for anything else.

    Args:
        path: The checkpoint file.
        weights_only: As for :func:`~htr_lightning.checkpoints.load_checkpoint_file`: False
            opens a trusted file that needs pickle.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not a Lightning checkpoint of an htr_lightning system.
        UnsafeCheckpointError: The file needs pickle and ``weights_only`` is not False.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = load_checkpoint_file(path, weights_only=weights_only)
    except UnsafeCheckpointError:
        raise  # it is a checkpoint, one that needs pickle: say that, not "not a checkpoint"
    except Exception as err:  # torch.load raises many types for a file that is not a checkpoint
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a PyTorch checkpoint ({first_line})") from None
    if not (isinstance(checkpoint, dict) and "state_dict" in checkpoint
            and "hyper_parameters" in checkpoint):
        raise ValueError(f"{path} is not a Lightning checkpoint of an htr_lightning model "
                         "(it has no state_dict and hyper_parameters)")
    return load_system(path, weights_only=weights_only)


def main(argv: list[str] | None = None) -> None:
    """``htr-lightning export``: checkpoint -> ONNX (+ sidecar) or safetensors bundle."""
    parser = argparse.ArgumentParser(
        prog="htr-lightning export",
        description="Export a training checkpoint to a standalone ONNX file (with its JSON "
                    "sidecar) or a safetensors + config.json bundle.")
    parser.add_argument("--ckpt_path", required=True, help="htr_lightning training checkpoint")
    parser.add_argument("--format", choices=("onnx", "safetensors", "transformers"), default="onnx")
    parser.add_argument("--output", required=True,
                        help="onnx: the .onnx file (the sidecar .json is written beside it); "
                             "safetensors: the bundle directory; transformers (TrOCR "
                             "checkpoints): the save_pretrained directory")
    parser.add_argument("--weights_only", choices=("true", "false"), default=None,
                        help="false: open a checkpoint you trust that needs pickle (refused "
                             "by default, see htr_lightning.checkpoints)")
    args = parser.parse_args(argv)
    weights_only = None if args.weights_only is None else args.weights_only == "true"
    try:
        system = load_checkpoint(args.ckpt_path, weights_only)
    except (FileNotFoundError, ValueError, UnsafeCheckpointError) as err:
        parser.error(str(err))
    # ONNX and bundles hold CTC networks; a TrOCR system writes a transformers folder.
    is_ctc = isinstance(system, CTCSystem)
    if is_ctc == (args.format == "transformers"):
        wanted = "onnx or safetensors" if is_ctc else "transformers"
        parser.error(f"{args.ckpt_path} holds a {type(system).__name__}: use --format {wanted}")
    if args.format == "transformers":
        print(f"wrote {system.export_pretrained(args.output)}")
    elif args.format == "onnx":
        if not args.output.endswith(".onnx"):
            parser.error(f"--output must name a .onnx file, not {args.output!r}")
        path = export_onnx(system, args.output)
        print(f"wrote {path} and {sidecar_path(path)}")
    else:
        directory = export_bundle(system, args.output)
        print(f"wrote {directory / BUNDLE_WEIGHTS} and {directory / BUNDLE_CONFIG}")
