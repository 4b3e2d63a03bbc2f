import datasets
import numpy as np
import pytest
from PIL import Image as PILImage

from conftest import make_image_dataset
from prunefuse_hf.constants import ROW_DIGESTS
from prunefuse_hf.trainer.run_state import check_same_pool, relative_image_paths, row_digests
from prunefuse_hf.utils.run_directory import RunDirectory


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


# ----- the pool a resume may use -----


def _pixels(values: np.ndarray) -> datasets.Dataset:
    features = datasets.Features({"pixel_values": datasets.Array3D(shape=values.shape[1:], dtype="uint8")})
    return datasets.Dataset.from_dict({"pixel_values": values}, features=features).with_format("numpy")


def test_check_same_pool_compares_the_labeled_rows_and_converts_a_version_3_dict(tmp_path):
    values = np.random.default_rng(0).integers(0, 256, (40, 1, 4, 4), dtype=np.uint8)
    labeled = np.array([3, 17, 25])
    digests = np.zeros(40, dtype=np.uint64)
    digests[labeled] = row_digests(_pixels(values), labeled)
    assert (digests[labeled] != 0).all() and len(set(digests[labeled].tolist())) == 3
    run_dir = RunDirectory(tmp_path)

    kept = check_same_pool(
        {"pool": {"num_examples": 40, ROW_DIGESTS: digests}},
        lambda rows: row_digests(_pixels(values), rows),
        run_dir,
    )
    assert np.array_equal(kept, digests)
    # State version 3 kept them as {"pool index": "hex"} in state.json: the same array comes back.
    version_3 = {"pool": {"num_examples": 40}, ROW_DIGESTS: {str(i): f"{digests[i]:016x}" for i in labeled}}
    assert np.array_equal(
        check_same_pool(version_3, lambda rows: row_digests(_pixels(values), rows), run_dir), digests
    )

    # An unlabeled row may change (nobody trained on it); a labeled one may not.
    values[5] ^= 1
    check_same_pool(
        {"pool": {"num_examples": 40, ROW_DIGESTS: digests}},
        lambda rows: row_digests(_pixels(values), rows),
        run_dir,
    )
    values[17] ^= 1
    with pytest.raises(
        ValueError, match=r"1 of the 3 labeled rows checked hold other pixels now \(pool index \[17\]"
    ):
        check_same_pool(
            {"pool": {"num_examples": 40, ROW_DIGESTS: digests}},
            lambda rows: row_digests(_pixels(values), rows),
            run_dir,
        )
