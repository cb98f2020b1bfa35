import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from htr_lightning.data import HTRDataModule
from htr_lightning.models import TeacherSystem


def test_validation_logs_line_images_with_reference_and_prediction(tmp_path, tiny_teacher_kwargs,
                                                                   tiny_data_kwargs):
    data = HTRDataModule(**tiny_data_kwargs)
    data.setup("fit")
    model = TeacherSystem(charset=data.charset, **tiny_teacher_kwargs)
    logger = TensorBoardLogger(tmp_path, name="tb")
    pl.Trainer(max_steps=2, val_check_interval=2, num_sanity_val_steps=1, logger=logger,
               log_every_n_steps=1,
               enable_progress_bar=False, enable_model_summary=False,
               enable_checkpointing=False).fit(model, data)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    images = sorted(events.Tags()["images"])
    assert images == [f"val_examples/{i}" for i in range(TeacherSystem.examples_logged)]
    assert all(len(events.Images(tag)) == 1 for tag in images)  # not during the sanity check
    first = events.Images("val_examples/0")[0]
    assert first.height == 32 and first.step == 2
    texts = [t for t in events.Tags()["tensors"] if t.startswith("val_examples/0")]
    note = events.Tensors(texts[0])[0].tensor_proto.string_val[0].decode()
    val_texts = [s.text for s in data.samples("val")]
    assert note.startswith("reference: `") and "prediction: `" in note
    assert note.split("`")[1] in val_texts
