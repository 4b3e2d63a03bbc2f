"""Reading people's boxes: Label Studio `RectangleLabels` exports (JSON, JSON_MIN, COCO) and COCO JSON files, each
turned into per-image answers (boxes in COCO pixels with their class names, who drew them and when), which
[`read_detection_labels`] resolves, maps to class ids and checks.

Label Studio stores a box as percents of the image (`x`, `y`, `width`, `height` of its top-left corner, with the
image's `original_width` / `original_height` in pixels); its COCO export renumbers the images from 0 and names
them after the task's image (`images/<md5 of the image URL, 8 hex digits>__<name>`), so they are matched back to
pool indices through the query ([`write_detection_query`] wrote the file names and the image URLs) or the pool's
file names.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..annotation.labels import ClassLookup, LabelError, image_references, parse_pool_index
from ..constants import COCO_TEMPLATE, LABEL_STUDIO_COCO, LABEL_STUDIO_TASKS, POOL_INDEX
from .detection_loading import is_coco_file

_BOX_TYPES = ("rectanglelabels", "rectangle")
_NOT_BOXES = (
    "polygonlabels",
    "polygon",
    "brushlabels",
    "brush",
    "keypointlabels",
    "keypoint",
    "ellipselabels",
)
_CACHED_NAME = re.compile(r"^([0-9a-f]{8})__(.+)$")  # Label Studio's export cache: <md5(url)[:8]>__<name>


@dataclass
class BoxAnswer:
    """One annotation of one image: boxes in COCO pixels `[x, y, w, h]` with their class names (or ids)."""

    boxes: list
    names: list
    annotator: str | None = None
    annotation_id: int | None = None
    ground_truth: bool = False
    stamp: str = ""
    order: int = 0
    size: tuple | None = None  # (width, height) the boxes were drawn on, when the export says
    categories: list | None = None  # class ids of `names`, set when they are looked up


@dataclass
class ImageAnswers:
    """Every answer an export holds for one image, and where it is."""

    pool_index: int
    place: str
    answers: list = field(default_factory=list)
    cancelled: int = 0
    references: dict = field(default_factory=dict)
    coco: bool = (
        False  # several COCO entries of one image: no ground truth, listed newest first by Label Studio
    )


def _flag(value) -> bool:
    """A Label Studio flag (`was_cancelled`, `ground_truth`), as JSON or as a CSV/JSON_MIN cell."""
    return value is True or (
        isinstance(value, (str, int)) and str(value).strip().lower() in ("true", "1", "yes")
    )


def annotator_name(value) -> str | None:
    """Who gave an answer, as a Label Studio export names them (`completed_by`: an id or a user dict; JSON_MIN's
    `annotator`): the email, else the username, else the id; `None` when the export does not say."""
    if isinstance(value, dict):
        return value.get("email") or value.get("username") or (str(value["id"]) if "id" in value else None)
    return None if value is None or value == "" else str(value)


def _number(value, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LabelError(
            f"{where}: {what} is {value!r}, not a number. Fix the box in Label Studio and export again."
        )
    return float(value)


class ImageIndex:
    """
    Which pool index an exported image is, and its size: from a query directory written by
    [`write_detection_query`] (its `annotations.json` and `label_studio_tasks.json`) and/or the pool dataset.
    """

    def __init__(self, query=None, dataset=None, image_column: str = "image"):
        self.dataset, self.image_column = dataset, image_column
        self.names: dict[str, int] = {}  # query file name -> pool index
        self.hashes: dict[str, int] = {}  # md5(image URL)[:8] -> pool index
        self.sizes: dict[int, tuple[int, int]] = {}
        self.query = Path(query) if query is not None else None
        if self.query is not None:
            template = self.query / COCO_TEMPLATE
            if not template.is_file():
                raise LabelError(
                    f"{template} not found: {query} is not a detection query written by write_detection_query."
                )
            for image in json.loads(template.read_text(encoding="utf-8"))["images"]:
                index = int(image.get(POOL_INDEX, image["id"]))
                self.names[image["file_name"]] = index
                self.sizes[index] = (int(image["width"]), int(image["height"]))
            tasks = self.query / LABEL_STUDIO_TASKS
            if tasks.is_file():
                for task in json.loads(tasks.read_text(encoding="utf-8")):
                    data = task["data"]
                    if data.get("image"):  # Label Studio names an exported image after md5(its URL)
                        self.hashes[hashlib.md5(data["image"].encode()).hexdigest()[:8]] = int(
                            data[POOL_INDEX]
                        )
        self._paths = None  # the pool's image paths, read on the first file name the query does not know

    def _pool_paths(self) -> list | None:
        if self._paths is None and self.dataset is not None:
            import pyarrow.compute as pc

            # Only the `path` field of the image column: no image bytes are read.
            storage = self.dataset.with_format("arrow")[self.image_column]
            self._paths = pc.struct_field(storage, "path").to_pylist() if len(self.dataset) else []
            by_name: dict[str, list[int]] = {}
            for index, path in enumerate(self._paths):
                if path:
                    by_name.setdefault(Path(path).name, []).append(index)
            self._unique = {name: found[0] for name, found in by_name.items() if len(found) == 1}
        return self._paths

    @property
    def pool_size(self) -> int | None:
        return None if self.dataset is None else len(self.dataset)

    @property
    def can_match(self) -> bool:
        return bool(self.names or self.hashes) or self.dataset is not None

    def size(self, index: int) -> tuple[int, int] | None:
        """(width, height) of a pool image as annotators saw it (upright), when the query or the pool says."""
        if index not in self.sizes and self.dataset is not None and 0 <= index < len(self.dataset):
            import datasets

            from ..data.images import open_image

            row = self.dataset.select([index]).cast_column(self.image_column, datasets.Image(decode=False))
            self.sizes[index] = open_image(row[0][self.image_column], pool_index=index).size
        return self.sizes.get(index)

    def match(self, file_name: str) -> int | None:
        """The pool index of an image named `file_name` in an export, or None when nothing says."""
        name = re.split(r"[\\/]", str(file_name))[-1]
        cached = _CACHED_NAME.match(name)
        candidates = [name] + ([cached.group(2)] if cached else [])
        for candidate in candidates:
            if candidate in self.names:
                return self.names[candidate]
        if cached and cached.group(1) in self.hashes:
            return self.hashes[cached.group(1)]
        paths = self._pool_paths()
        if paths is None:
            return None
        for candidate in candidates:
            if candidate in self._unique:
                return self._unique[candidate]
            # The names queries give images without a unique file: `<pool_index>.png`, `<pool_index>_<basename>`.
            numbered = re.match(r"^(\d+)(?:\.png|_(.+))$", candidate)
            if numbered and int(numbered.group(1)) < len(paths):
                path, rest = paths[int(numbered.group(1))], numbered.group(2)
                if (rest is None and not path) or (path and Path(path).name == rest):
                    return int(numbered.group(1))
        return None


# ----- Label Studio JSON (full) -----


def _boxes_of(results: list, where: str) -> tuple[list, list, tuple | None]:
    """Boxes (COCO px) and class names of one annotation's results; a `Rectangle` region gets its class from the
    `Labels` result of the same region id."""
    regions: dict[str, dict] = {}
    for k, result in enumerate(results or []):
        kind = result.get("type")
        if kind in _NOT_BOXES:
            raise LabelError(
                f"{where}: a {kind} result ({result.get('from_name')!r}) is not a box. Object detection reads "
                "RectangleLabels: use the labeling config PruneFuse writes (label_studio_config.xml)."
            )
        if kind in _BOX_TYPES or kind == "labels":
            region = regions.setdefault(str(result.get("id", f"#{k}")), {})
            region.setdefault("results", []).append(result)
    boxes, names, size = [], [], None
    for number, region in enumerate(regions.values()):
        at = f"{where}, box {number}"
        geometry = next((r for r in region["results"] if r.get("type") in _BOX_TYPES), None)
        if geometry is None:
            continue  # a Labels result of no rectangle (e.g. a text span): not a box
        value = geometry.get("value") or {}
        labels = [name for r in region["results"] for name in (r.get("value") or {}).get(r.get("type"), [])
                  if r.get("type") in ("rectanglelabels", "labels")]  # fmt: skip
        labels = list(dict.fromkeys(labels))
        if len(labels) != 1:
            raise LabelError(
                f"{at}: the box has {'no class' if not labels else f'several classes {labels}'}; give every box "
                "exactly one class in Label Studio and export again."
            )
        for rotation in ("rotation", "image_rotation"):
            turned = value.get(rotation, geometry.get(rotation)) or 0
            if _number(turned, rotation, at) != 0:
                raise LabelError(
                    f"{at}: the box ({value.get('x')}, {value.get('y')}, {value.get('width')}, {value.get('height')} "
                    f"%) has {rotation} {turned}; detectors take upright boxes. Turn it back to 0 in Label Studio "
                    "(the config PruneFuse writes hides the rotation handle) and export again."
                )
        width, height = geometry.get("original_width"), geometry.get("original_height")
        if width is None or height is None:
            raise LabelError(
                f"{at}: no original_width/original_height, so its percents cannot be turned into pixels. Export "
                "from Label Studio again (it writes them with every box)."
            )
        size = (_number(width, "original_width", at), _number(height, "original_height", at))
        x, y, w, h = (_number(value.get(key), key, at) for key in ("x", "y", "width", "height"))
        boxes.append([x / 100 * size[0], y / 100 * size[1], w / 100 * size[0], h / 100 * size[1]])
        names.append(labels[0])
    return boxes, names, size


def answers_from_label_studio(tasks: list[dict], name: str) -> list[ImageAnswers]:
    """Per task: its non-cancelled annotations' boxes; a task whose every annotation was cancelled is skipped."""
    found = []
    for j, task in enumerate(tasks):
        data = task["data"]
        place = f"Label Studio task {task['id']} (item {j})" if task.get("id") is not None else f"item {j}"
        if POOL_INDEX not in data:
            raise LabelError(
                f"{name}: {place} has no data.{POOL_INDEX}; data fields found: {list(data)}. Import the tasks from "
                f"PruneFuse's {LABEL_STUDIO_TASKS} (its data carries {POOL_INDEX!r})."
            )
        index = parse_pool_index(data[POOL_INDEX], f"{name}, {place}")
        image = ImageAnswers(index, place, references=image_references(data))
        for k, annotation in enumerate(task.get("annotations", task.get("completions")) or []):
            if _flag(annotation.get("was_cancelled")) or _flag(annotation.get("skipped")):
                image.cancelled += 1
                continue
            where = f"{name}, {place} ({POOL_INDEX} {index}), annotation {annotation.get('id')}"
            boxes, names, size = _boxes_of(annotation.get("result"), where)
            image.answers.append(BoxAnswer(boxes, names, annotator_name(annotation.get("completed_by")),
                                           annotation.get("id"), _flag(annotation.get("ground_truth")),
                                           str(annotation.get("updated_at") or annotation.get("created_at") or ""),
                                           k, size))  # fmt: skip
        if image.answers or image.cancelled:
            found.append(image)
    return found


# ----- Label Studio JSON_MIN -----


def _is_box_list(value) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) and "width" in v for v in value)
    )


def answers_from_json_min(records: list[dict], name: str) -> list[ImageAnswers]:
    """One record per annotation (JSON_MIN): the box list sits under the tag's name (absent: no boxes)."""
    images: dict[int, ImageAnswers] = {}
    for j, record in enumerate(records):
        place = f"item {j}" + (f" (Label Studio task {record['id']})" if record.get("id") is not None else "")
        if POOL_INDEX not in record:
            raise LabelError(
                f"{name}: {place} has no {POOL_INDEX!r}; fields found: {list(record)}. Import the tasks from "
                f"PruneFuse's {LABEL_STUDIO_TASKS} (its data carries {POOL_INDEX!r}) and export again."
            )
        if record.get("annotation_id") is None or _flag(record.get("was_cancelled")):
            continue  # a task exported without an answer, or a skip (JSON_MIN does not list skips)
        index = parse_pool_index(record[POOL_INDEX], f"{name}, {place}")
        keys = [key for key, value in record.items() if _is_box_list(value)]
        where = f"{name}, {place} ({POOL_INDEX} {index}), annotation {record.get('annotation_id')}"
        if len(keys) > 1:
            raise LabelError(f"{where}: several box tags {keys}; PruneFuse reads one RectangleLabels tag.")
        results = [{"type": "rectanglelabels", "id": str(k), "original_width": v.get("original_width"),
                    "original_height": v.get("original_height"), "value": v}
                   for k, v in enumerate(record[keys[0]] if keys else [])]  # fmt: skip
        boxes, names, size = _boxes_of(results, where)
        image = images.setdefault(index, ImageAnswers(index, place, references=image_references(record)))
        image.answers.append(BoxAnswer(boxes, names, annotator_name(record.get("annotator")), record.get("annotation_id"),
                                       False, str(record.get("updated_at") or record.get("created_at") or ""), j,
                                       size))  # fmt: skip
    return list(images.values())


# ----- COCO (Label Studio's export and plain files) -----


def read_coco_source(path: Path, shown: str) -> dict:
    """The COCO content of a file, a Label Studio COCO zip, or a folder holding `result.json` or one COCO file."""
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.endswith(".json")]
            member = (
                LABEL_STUDIO_COCO
                if LABEL_STUDIO_COCO in members
                else (members[0] if len(members) == 1 else None)
            )
            if member is None:
                raise LabelError(f"{shown}: a zip without {LABEL_STUDIO_COCO} (JSON files: {members}). Pass "
                                 "Label Studio's COCO export as downloaded.")  # fmt: skip
            return json.loads(archive.read(member))
    if path.is_dir():
        files = (
            [path / LABEL_STUDIO_COCO]
            if (path / LABEL_STUDIO_COCO).is_file()
            else sorted(path.glob("*.json"))
        )
        coco = [f for f in files if is_coco_file(f)]
        if len(coco) != 1:
            raise LabelError(
                f"{shown} is a folder with {len(coco)} COCO JSON files ({[f.name for f in coco]}); pass the file."
            )
        return json.loads(coco[0].read_text(encoding="utf-8"))
    return json.loads(path.read_text(encoding="utf-8"))


def answers_from_coco(coco: dict, name: str, index: ImageIndex) -> list[ImageAnswers]:
    """One answer per COCO image entry; entries of one pool index (Label Studio writes one per annotation, newest
    first) become several answers of that image."""
    from_label_studio = (coco.get("info") or {}).get("contributor") == "Label Studio"
    categories = {c["id"]: c.get("name", str(c["id"])) for c in coco["categories"]}
    per_image: dict = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        if annotation.get("image_id") not in per_image:
            raise LabelError(f"{name}: annotation {annotation.get('id')} names image_id {annotation.get('image_id')}, "
                             "which is not in `images`. Add the image or drop the annotation.")  # fmt: skip
        if annotation.get("category_id") not in categories:
            raise LabelError(f"{name}: annotation {annotation.get('id')} names category_id "
                             f"{annotation.get('category_id')}, which is not in `categories` {sorted(categories)}.")  # fmt: skip
        per_image[annotation["image_id"]].append(annotation)
    images: dict[int, ImageAnswers] = {}
    for j, entry in enumerate(coco["images"]):
        place = f"image {entry.get('id')} ({entry.get('file_name')!r})"
        pool_index = _coco_pool_index(entry, from_label_studio, index, f"{name}, {place}")
        where = f"{name}, {place} ({POOL_INDEX} {pool_index})"
        boxes = []
        for annotation in per_image[entry["id"]]:
            box = annotation.get("bbox")
            if not isinstance(box, list) or len(box) != 4:
                raise LabelError(f"{where}: annotation {annotation.get('id')} bbox {box!r} is not 4 numbers "
                                 "[x, y, width, height] in pixels. Fix it and export again.")  # fmt: skip
            boxes.append([_number(v, "a bbox value", where) for v in box])
        size = (entry["width"], entry["height"]) if entry.get("width") and entry.get("height") else None
        names = [categories[a["category_id"]] for a in per_image[entry["id"]]]
        # A COCO file of ours names each image as the query showed it: checked against the query (Label Studio's
        # own COCO export renames the files, and is matched by file name instead).
        shown = {} if from_label_studio or not entry.get("file_name") else {"file_name": entry["file_name"]}
        image = images.setdefault(pool_index, ImageAnswers(pool_index, place, coco=True, references=shown))
        image.answers.append(BoxAnswer(boxes, names, stamp="", order=-j, size=size))
    return list(images.values())


def _coco_pool_index(entry: dict, from_label_studio: bool, index: ImageIndex, where: str) -> int:
    """A COCO image's pool index: its `pool_index` field, else its file name matched through the query or the pool,
    else (not a Label Studio export) its `id`; a file name that names another pool image is refused."""
    file_name = entry.get("file_name")
    matched = index.match(file_name) if file_name else None
    if entry.get(POOL_INDEX) is not None:
        chosen = parse_pool_index(entry[POOL_INDEX], where)
    elif matched is not None:
        chosen = matched
    elif from_label_studio:
        raise LabelError(
            f"{where}: Label Studio's COCO export numbers its images from 0, so the pool index comes from the file "
            + ("name, which is neither in the query nor in the pool. Pass the query this export answers, or "
               "export JSON or JSON_MIN (they carry pool_index)."
               if index.can_match else
               "name: pass query=<the query directory> (or the pool as dataset=), or export JSON or JSON_MIN "
               "(they carry pool_index).")
        )  # fmt: skip
    else:
        chosen = parse_pool_index(entry.get("id"), where)
    if matched is not None and matched != chosen:
        raise LabelError(
            f"{where}: the entry says pool index {chosen}, but its file name {file_name!r} is pool index {matched}. "
            "The file's image ids were renumbered or it belongs to another query: keep the query's ids and "
            f"file names ({COCO_TEMPLATE}), or drop {POOL_INDEX!r}/fix the ids."
        )
    return chosen


def same_boxes(a: BoxAnswer, b: BoxAnswer) -> bool:
    """Whether two answers hold the same boxes and classes, in any order, to 1e-3 px."""
    key = lambda answer: sorted(  # noqa: E731
        (c, *np.round(np.asarray(box, dtype=np.float64), 3).tolist())
        for c, box in zip(answer.categories, answer.boxes)
    )
    return key(a) == key(b)


def annotation_objects(annotation: dict, class_names: list[str]) -> dict | None:
    """
    The boxes of one Label Studio annotation as the run stores them (`{"bbox": COCO pixels, "category": class ids}`;
    no boxes is an answer too), or `None` for a skip or an annotation that cannot be read as boxes of the run's
    classes.

    Example:

    ```python
    >>> result = {"type": "rectanglelabels", "original_width": 40, "original_height": 20,
    ...           "value": {"x": 25, "y": 25, "width": 50, "height": 50, "rectanglelabels": ["dog"]}}
    >>> annotation_objects({"id": 3, "result": [result]}, ["cat", "dog"])
    {'bbox': [[10.0, 5.0, 20.0, 10.0]], 'category': [1]}
    ```
    """
    if _flag(annotation.get("was_cancelled")) or _flag(annotation.get("skipped")):
        return None
    try:
        boxes, names, _ = _boxes_of(annotation.get("result"), f"annotation {annotation.get('id')}")
        lookup = ClassLookup(class_names)
        categories = [lookup.parse(name, f"annotation {annotation.get('id')}") for name in names]
    except LabelError:
        return None
    if any(category is None for category in categories):
        return None
    return {"bbox": [[float(v) for v in box] for box in boxes], "category": categories}


def same_objects(a: dict, b: dict) -> bool:
    """Whether two box sets (`{"bbox", "category"}`) hold the same boxes and classes, in any order, to 1e-3 px."""
    key = lambda objects: sorted(  # noqa: E731
        (int(c), *np.round(np.asarray(box, dtype=np.float64), 3).tolist())
        for c, box in zip(objects["category"], objects["bbox"])
    )
    return key(a) == key(b)


def describe_objects(objects: dict, class_names: list[str] | None = None) -> str:
    """A box set as a message names it: `2 boxes [dog (10, 5, 20, 10), cat (1, 2, 5, 5)]` (COCO pixels)."""
    shown = []
    for category, box in zip(objects["category"], objects["bbox"]):
        name = class_names[category] if class_names and 0 <= category < len(class_names) else category
        shown.append(f"{name} ({', '.join(f'{v:g}' for v in np.round(np.asarray(box, dtype=float), 1))})")
    count = len(shown)
    return f"{count} box{'es' if count != 1 else ''} [{', '.join(shown)}]"
