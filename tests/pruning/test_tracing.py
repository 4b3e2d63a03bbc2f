"""The inputs models are traced with (`pruning/tracing.py`): both pruning paths and the cost counts agree on them."""

import torch
import transformers

from conftest import DETECTION_IMAGE_SIZE, IMAGE_SIZE, dense_model, detection_model
from prunefuse_hf.constants import PIXEL_VALUES
from prunefuse_hf.pruning.tracing import (
    DEFAULT_TRACE_IMAGE_SIZE,
    TRACE_BATCH_SIZE,
    example_inputs_for,
    example_pixel_values,
    materialize_inputs,
    model_image_size,
    trace_image_size,
    trace_inputs,
)


def test_the_trace_size_is_the_configs_image_size_else_the_default():
    vit = dense_model("vit")  # image_size in its config
    assert model_image_size(vit) == IMAGE_SIZE
    assert trace_image_size(vit) == (IMAGE_SIZE, IMAGE_SIZE)
    resnet = dense_model("resnet")  # no image_size
    assert model_image_size(resnet) is None
    assert trace_image_size(resnet) == (DEFAULT_TRACE_IMAGE_SIZE, DEFAULT_TRACE_IMAGE_SIZE)
    assert trace_image_size(resnet, 48) == (48, 48)
    yolos = detection_model("yolos")  # a [height, width] list
    assert model_image_size(yolos) == (DETECTION_IMAGE_SIZE, DETECTION_IMAGE_SIZE)


def test_rt_detr_is_traced_at_a_size_with_at_least_one_encoder_position_per_query():
    tiny = detection_model("rt_detr")  # 10 queries: the default size has 8 x 8 + 4 x 4 + 2 x 2 = 84 positions
    assert trace_image_size(tiny) == (DEFAULT_TRACE_IMAGE_SIZE, DEFAULT_TRACE_IMAGE_SIZE)
    with torch.device("meta"):
        default = transformers.RTDetrForObjectDetection(transformers.RTDetrConfig())  # 300 queries
    # 16 x 16 + 8 x 8 + 4 x 4 = 336 positions at 128; 189 at 96.
    assert trace_image_size(default) == (128, 128)


def test_both_paths_trace_the_same_image_shape():
    for model in (dense_model("resnet", num_channels=1), dense_model("swin")):
        pixel_values = example_pixel_values(model)
        spec = trace_inputs(model)
        assert spec[PIXEL_VALUES]["shape"] == [TRACE_BATCH_SIZE, *pixel_values.shape[1:]]
        assert pixel_values.shape[1] == model.config.num_channels


def test_example_inputs_are_a_dict_of_pixel_values():
    model = dense_model("resnet")
    given = torch.zeros(2, 3, 16, 16)
    assert example_inputs_for(model, given)[PIXEL_VALUES] is given
    assert example_inputs_for(model, {PIXEL_VALUES: given})[PIXEL_VALUES] is given
    assert example_inputs_for(model)[PIXEL_VALUES].shape == (
        1,
        3,
        DEFAULT_TRACE_IMAGE_SIZE,
        DEFAULT_TRACE_IMAGE_SIZE,
    )


def test_a_stored_spec_gives_the_same_inputs_every_time():
    model = dense_model("vit")
    spec = trace_inputs(model)
    first, again = materialize_inputs(spec, model), materialize_inputs(spec, model)
    assert torch.equal(first[PIXEL_VALUES], again[PIXEL_VALUES])
    assert first[PIXEL_VALUES].dtype == next(model.parameters()).dtype
    assert materialize_inputs(spec, model, torch.float64)[PIXEL_VALUES].dtype == torch.float64
