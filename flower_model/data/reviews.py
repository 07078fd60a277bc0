"""Label reviews: a person's decisions about photos, versioned with the code and applied by
preprocess after the split.

`reviews/<data.name>.csv` (in preprocess.label_reviews_dir; a data set without one has no
reviews) has the columns file, decision, note:
- `file` as in manifest.csv and reports/label_issues.csv (`<class folder>/<name>`);
- `decision`: `relabel:<class>` (the photo shows that class), `exclude` (not a flower of any
  class: a limousine, a marching band) or `keep` (the label is right; the search was wrong);
- `note`: one line of reason.

The split of a photo is decided before reviews apply, from its original label and pixels, so a
review never moves a photo between train, val and test. With preprocess.reviews_in_training
(default off until validation over seeds says it helps: docs/data.md), a review in train and val
changes what the model learns from (a relabel changes the label, an exclude drops the photo,
listed in reports/dropped.csv). Test photos keep their original labels in the arrays, so the
headline test accuracy stays comparable with every earlier figure; their reviewed labels are a
separate array (-1 for excluded) that evaluate scores beside the headline.
"""

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from flower_model.errors import FlowerModelError

COLUMNS = ("file", "decision", "note")
RELABEL = "relabel:"
EXCLUDE, KEEP = "exclude", "keep"
EXCLUDED_LABEL = -1  # a test photo's reviewed label when it is excluded
REVIEW_EXCLUDE = "review_exclude"  # its reason in reports/dropped.csv


@dataclass(frozen=True)
class Review:
    file: str
    decision: str
    note: str
    label: int | None  # the new label of a relabel, else None


def _decision(path: Path, line: int, text: str, classes: list[str]) -> int | None:
    if text in (EXCLUDE, KEEP):
        return None
    if text.startswith(RELABEL) and text[len(RELABEL) :] in classes:
        return classes.index(text[len(RELABEL) :])
    wanted = f"{EXCLUDE}, {KEEP} or {RELABEL}<class> with a class of {classes}"
    raise FlowerModelError(f"{path}:{line}: decision {text!r} is not {wanted}; fix the line")


def reviews_file(folder: Path, data_name: str) -> Path:
    return folder / f"{data_name}.csv"


def read_reviews(path: Path, classes: list[str], dataset: Path) -> dict[str, Review]:
    """The reviews in `path` (none if there is no such file), checked against the class names and
    the photos in `dataset`; one line naming the file, the line and the fix for anything else. A
    BOM and Windows line ends work."""
    if not path.is_file():
        return {}
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise FlowerModelError(f"{path} cannot be read ({error}); save it as UTF-8 CSV") from None
    if not rows or tuple(cell.strip() for cell in rows[0]) != COLUMNS:
        raise FlowerModelError(f"{path}: the first line must be {','.join(COLUMNS)}")
    reviews: dict[str, Review] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(COLUMNS):
            raise FlowerModelError(f"{path}:{line}: needs {len(COLUMNS)} fields {COLUMNS}")
        file, decision, note = (cell.strip() for cell in row)
        if not (dataset / file).is_file():
            raise FlowerModelError(
                f"{path}:{line}: no photo {file!r} in the data set (use the file column of "
                "reports/label_issues.csv); fix or remove the line"
            )
        if file in reviews:
            raise FlowerModelError(f"{path}:{line}: {file} is reviewed twice; keep one line")
        reviews[file] = Review(file, decision, note, _decision(path, line, decision, classes))
    return reviews


def apply_reviews(splits: dict[str, list], reviews: dict[str, Review], in_training: bool):
    """(splits with train/val reviews applied when `in_training`, the test split's reviewed
    labels, the reviews that apply as (split, item, review), the train/val photos excluded as
    dropped items). Test reviews always give the reviewed labels: they change no headline."""
    applied, excluded, reviewed = [], [], {}
    for split, items in splits.items():
        kept = []
        for item in items:
            review = reviews.get(item.file)
            if review is None or (split != "test" and not in_training):
                kept.append(item)
                continue
            applied.append((split, item, review))
            if split == "test":
                kept.append(item)  # the headline keeps the original label
                new = review.label if review.label is not None else item.label
                reviewed[item.file] = EXCLUDED_LABEL if review.decision == EXCLUDE else new
            elif review.decision == EXCLUDE:
                excluded.append(
                    dataclasses.replace(item, reason=REVIEW_EXCLUDE, detail=review.note)
                )
            else:
                new = review.label if review.label is not None else item.label
                kept.append(dataclasses.replace(item, label=new))
        splits = {**splits, split: kept}
    test_labels = [reviewed.get(item.file, item.label) for item in splits["test"]]
    return splits, test_labels, applied, excluded
