"""Rank the photos whose given label the data disputes, for a person to review.

cleanlab over cross-validated probabilities: reports/label_issues.csv, counts, and a gallery."""

from pathlib import Path

from flower_model.config import Config
from flower_model.pipeline.stage import stage_main


def run(config: Config, root: Path, params: dict) -> None:
    from flower_model.data.layout import read_classes
    from flower_model.evaluation import label_issues as issues
    from flower_model.io_utils import csv_text, write_json, write_text

    paths, settings = config.paths, config.label_issues
    processed = root / paths.processed_dir
    classes = read_classes(processed)
    found = issues.Features.load(root / paths.features_dir / issues.FEATURES_FILE)
    probs = issues.cross_validated_probs(found.features, found.labels, settings)
    ranked, quality = issues.find_issues(found.labels, probs, settings.filter_by)
    rows = issues.issue_rows(found, probs, ranked, quality, classes)
    header = ["rank", "file", "split", "given", "suggested", "label_quality"]
    write_text(root / paths.reports_dir / issues.ISSUES_CSV, csv_text(header, rows))
    counted = issues.counts(found, ranked, classes)
    write_json(root / paths.reports_dir / issues.ISSUES_JSON, {"label_issues": counted})
    gallery = root / paths.plots_dir / issues.GALLERY_FILE
    issues.draw_gallery(processed, found, ranked, rows, settings.gallery_size, gallery)
    print(
        f"label_issues: {counted['flagged']} of {counted['photos']} photos flagged "
        f"({', '.join(f'{split} {count}' for split, count in counted['by_split'].items())}); "
        f"review {paths.reports_dir / issues.ISSUES_CSV}"
    )


if __name__ == "__main__":
    stage_main(run)
