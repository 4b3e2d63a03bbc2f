"""Gray models (`num_channels: 1`) in `pipeline("image-classification")`: the RGB copy written by
`export_rgb_checkpoint` predicts on raw images (gray or color) what the gray model predicts on their gray
conversion, for every supported family; a gray run says at the start how to get it."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from conftest import FAMILY_ADAPTERS, make_image_dataset, model_class, tiny_config, tiny_resnet_config
from prunefuse_hf import PruneFuseConfig, PruneFuseTrainer, export_rgb_checkpoint
from prunefuse_hf.data import ImagePreprocessor, build_image_processor


def _images(seed=0):
    rng = np.random.default_rng(seed)
    color = [Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)) for _ in range(3)]
    return color + [image.convert("L") for image in color]


@pytest.mark.parametrize("model_type", sorted(FAMILY_ADAPTERS))
def test_the_rgb_copy_of_a_gray_model_works_in_pipeline_with_the_gray_models_predictions(
    tmp_path, model_type
):
    config = tiny_config(model_type, num_channels=1, image_size=32)
    gray = model_class(model_type)(config).eval()
    processor = build_image_processor(config, image_size=32)
    gray.save_pretrained(tmp_path / "gray")
    processor.save_pretrained(tmp_path / "gray")
    with pytest.raises(Exception, match="mean must have"):  # what a user hits without the export
        pipeline("image-classification", model=str(tmp_path / "gray"))(_images()[0])

    export_rgb_checkpoint(tmp_path / "gray", tmp_path / "rgb")
    classifier = pipeline("image-classification", model=str(tmp_path / "rgb"))
    preprocessor = ImagePreprocessor(processor, num_channels=1)
    for image in _images():
        with torch.no_grad():
            expected = gray(pixel_values=preprocessor.normalize(preprocessor.to_pixels([image.convert("L")])))
        scores = {r["label"]: r["score"] for r in classifier(image, top_k=config.num_labels)}
        probabilities = expected.logits.softmax(-1)[0]
        # Gray images exactly; color ones up to PIL's rounding of the gray conversion to uint8.
        tolerance = 1e-4 if image.mode == "L" else 2e-2
        for i, p in enumerate(probabilities.tolist()):
            assert scores[gray.config.id2label[i]] == pytest.approx(p, abs=tolerance), (
                model_type,
                image.mode,
            )


def test_a_gray_run_says_at_the_start_how_to_get_a_pipeline_ready_model(tmp_path, capsys):
    pool = make_image_dataset(num_examples=32, num_classes=4, seed=1, mode="L")
    args = PruneFuseConfig(output_dir=str(tmp_path / "run"), initial_labeled_size=8, query_size=8, num_rounds=1,
                           num_train_epochs=1, per_device_train_batch_size=8, disable_tqdm=True)  # fmt: skip
    trainer = PruneFuseTrainer(tiny_resnet_config(num_channels=1), args=args, train_dataset=pool)
    said = capsys.readouterr().err
    assert "num_channels: 1" in said and "export_rgb_checkpoint(RUN/fused, OUT)" in said
    trainer.train()
    export_rgb_checkpoint(trainer.run_dir.fused_dir, tmp_path / "rgb")
    classifier = pipeline("image-classification", model=str(tmp_path / "rgb"))
    model = trainer.model.eval()
    for i in range(4):
        image = pool[i]["image"]
        with torch.no_grad():
            pixels = trainer.preprocessor.normalize(trainer.preprocessor.to_pixels([image]))
            expected = model(pixel_values=pixels.to(model.device)).logits.argmax(-1).item()
        assert classifier(image.convert("RGB"), top_k=1)[0]["label"] == model.config.id2label[expected]
