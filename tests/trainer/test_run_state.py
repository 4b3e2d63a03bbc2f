import datasets
import numpy as np
from PIL import Image as PILImage

from conftest import make_image_dataset
from prunefuse_hf.trainer.run_state import relative_image_paths


def _paths_by_reading_the_column(dataset, column):
    """What the image paths were found from before: every row's storage, bytes included."""
    stored = dataset.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    return [value.get("path") if value else None for value in stored[column]]


def _image_folder_dataset(tmp_path, num_images=12):
    paths = []
    for i in range(num_images):
        path = tmp_path / "photos" / f"class{i % 3}" / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(np.full((4, 4), i * 10, dtype=np.uint8)).save(path)
        paths.append(str(path))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": paths, "label": list(range(num_images))}, features=features)


def test_relative_image_paths_come_from_the_arrow_path_field(tmp_path):
    dataset = _image_folder_dataset(tmp_path)

    paths = relative_image_paths(dataset, "image")

    assert paths == [f"class{i % 3}/img{i:02d}.png" for i in range(12)]
    root = str(tmp_path / "photos")
    assert [f"{root}/{p}" for p in paths] == _paths_by_reading_the_column(dataset, "image")


def test_relative_image_paths_follow_a_selected_and_shuffled_view(tmp_path):
    view = _image_folder_dataset(tmp_path).shuffle(seed=3).select([5, 0, 7, 2])

    paths = relative_image_paths(view, "image")

    expected = [
        p.removeprefix(str(tmp_path / "photos") + "/") for p in _paths_by_reading_the_column(view, "image")
    ]
    assert paths == expected
    assert len(set(paths)) == 4


def test_relative_image_paths_are_none_for_embedded_images_and_empty_without_an_image_column():
    dataset = make_image_dataset(num_examples=5)

    assert relative_image_paths(dataset, "image") == [None] * 5
    assert relative_image_paths(dataset, "label") == []
