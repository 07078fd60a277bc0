"""Nothing a user types can destroy the project: hostile paths, values and YAML files are refused
in one line before any work, and no stage replaces a folder that is not its own output.

Grouped by class as the hostile run found them (issue: "Nothing a user types can destroy the
project"): path keys, the second guard in io_utils, params.yaml/dvc.yaml files, values.
"""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from flower_model.config import ConfigError, load_config
from flower_model.config.project_paths import PROJECT_OWN
from flower_model.errors import FlowerModelError, ProtectedPathError
from flower_model.io_utils import atomic_dir, remove_tree, write_text
from tests.conftest import CLASS_NAMES, REPO_ROOT
from tests.helpers.cli import run_in_process

OUT_KEYS = ("raw_dir", "processed_dir", "models_dir", "reports_dir", "plots_dir")
PATH_KEYS = (*OUT_KEYS, "download_cache_dir")
# Values that named the project, a parent of it or its own files; each must be refused.
HOSTILE_PATHS = ("", ".", "./", "..", "../elsewhere", "data/../..", "configs", ".git/x")
ALIAS_BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
)


def _tree(folder):
    """Every path under `folder` with its bytes (files) or None (folders): a snapshot to compare."""
    return {
        path.relative_to(folder): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


def _params_with(project, key, value):
    params = yaml.safe_load((project / "params.yaml").read_text())
    section, leaf = key.split(".")
    params[section][leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _with_photos(project, mini_dataset):
    shutil.copytree(mini_dataset, project / "data" / "raw" / "flower_photos")
    return project


class TestPathKeys:
    @pytest.mark.parametrize("key", PATH_KEYS)
    @pytest.mark.parametrize("value", HOSTILE_PATHS)
    def test_an_override_naming_the_project_is_refused(self, key, value):
        with pytest.raises(ConfigError, match=f"paths.{key} = "):
            load_config(REPO_ROOT, [f"paths.{key}={value}"])

    @pytest.mark.parametrize("key", OUT_KEYS)
    def test_an_out_outside_the_project_is_refused(self, key):
        with pytest.raises(ConfigError, match=f"paths.{key} = .*relative to the project root"):
            load_config(REPO_ROOT, [f"paths.{key}=/tmp/elsewhere"])

    def test_the_download_cache_may_live_elsewhere_on_purpose(self, tmp_path):
        config = load_config(REPO_ROOT, [f"paths.download_cache_dir={tmp_path}"])
        assert config.paths.download_cache_dir == tmp_path
        with pytest.raises(ConfigError, match="not a cache folder of its own"):
            load_config(REPO_ROOT, ["paths.download_cache_dir=/"])

    @pytest.mark.parametrize("own", PROJECT_OWN)
    def test_no_out_inside_the_projects_own_folders(self, own):
        with pytest.raises(ConfigError, match="holds the project's own files"):
            load_config(REPO_ROOT, [f"paths.models_dir={own}/models"])

    @pytest.mark.parametrize(
        ("first", "second"), [("processed_dir", "raw_dir"), ("reports_dir", "plots_dir")]
    )
    def test_two_keys_may_not_share_or_nest_folders(self, first, second):
        with pytest.raises(ConfigError, match="overlap"):
            load_config(REPO_ROOT, [f"paths.{first}=data/x", f"paths.{second}=data/x"])
        with pytest.raises(ConfigError, match="overlap"):
            load_config(REPO_ROOT, [f"paths.{first}=data/x", f"paths.{second}=data/x/y"])

    @pytest.mark.parametrize("name", ["", ".", "..", "../../x", "a/b"])
    def test_the_data_name_is_one_folder(self, name):
        with pytest.raises(ConfigError, match="data.name = .*one|data.name = .*folder"):
            load_config(REPO_ROOT, [f"data.name={name}"])

    @pytest.mark.slow
    @pytest.mark.parametrize("value", ["", ".", ".."])
    def test_preprocess_with_an_empty_processed_dir_leaves_the_clone_whole(
        self, project, mini_dataset, value
    ):
        # The data-loss bug: `flower-model preprocess 'paths.processed_dir='` replaced the clone.
        _with_photos(project, mini_dataset)
        (project / ".git").mkdir()
        (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
        before = _tree(project)
        code, _, err = run_in_process(project, "preprocess", f"paths.processed_dir={value}")
        assert code == 2
        assert "paths.processed_dir" in err and "Traceback" not in err
        assert _tree(project) == before

    @pytest.mark.slow
    @pytest.mark.parametrize("key", OUT_KEYS)
    def test_a_bad_path_in_params_yaml_stops_every_stage_before_work(self, project, key):
        _params_with(project, f"paths.{key}", ".")
        before = _tree(project)
        for stage in ("download", "preprocess", "evaluate"):
            code, _, err = run_in_process(project, stage)
            assert code == 2, stage
            assert f"paths.{key}" in err and "Traceback" not in err
        assert _tree(project) == before


class TestDeleteGuard:
    """The second guard: whatever path a caller computes, only a folder of its own is replaced."""

    def test_a_folder_holding_a_project_is_never_replaced(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        victim = tmp_path / "someone" / "project"
        (victim / ".git").mkdir(parents=True)
        write_text(victim / "code.py", "print('mine')\n")
        before = _tree(victim)
        with pytest.raises(ProtectedPathError, match="holds .git"):
            with atomic_dir(victim) as staging:
                (staging / "classes.json").write_text("[]")
        assert _tree(victim) == before
        assert sorted(path.name for path in victim.parent.iterdir()) == ["project"]

    @pytest.mark.parametrize("where", ["cwd", "parent", "home"])
    def test_the_working_folder_its_parents_and_home_are_never_replaced(
        self, tmp_path, monkeypatch, where
    ):
        work = tmp_path / "work"
        work.mkdir()
        monkeypatch.chdir(work)
        target = {"cwd": work, "parent": tmp_path, "home": tmp_path / "home"}[where]
        if where == "home":
            target.mkdir()
            monkeypatch.setenv("HOME", str(target))
        with pytest.raises(ProtectedPathError, match="refusing to replace"):
            remove_tree(target)
        assert work.is_dir() and target.is_dir()

    def test_an_output_folder_of_its_own_is_replaced(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        out = tmp_path / "data" / "processed"
        out.mkdir(parents=True)
        (out / "old.npy").write_text("old")
        with atomic_dir(out) as staging:
            (staging / "new.npy").write_text("new")
        assert [path.name for path in out.iterdir()] == ["new.npy"]

    @pytest.mark.slow
    def test_triton_repo_into_the_project_is_refused(self, project, tiny_onnx):
        before = _tree(project)
        code, _, err = run_in_process(project, "triton-repo", ".", "--model", str(tiny_onnx))
        assert code == 2
        assert "refusing to replace" in err and "Traceback" not in err
        assert _tree(project) == before


class TestYamlFiles:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("paths:\n  raw_dir: data/raw\n  raw_dir: data/x\n", "'raw_dir' appears twice"),
            (ALIAS_BOMB, "aliases"),
            (b"paths: \xff\xfe\n", "not UTF-8"),
            ("paths: [unclosed\n", "cannot be read"),
        ],
    )
    def test_a_bad_params_yaml_is_one_line_before_work(self, project, text, expected):
        target = project / "params.yaml"
        target.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(ConfigError, match=expected) as raised:
            load_config(project)
        assert "flower-model compose" in str(raised.value)
        assert len(str(raised.value)) < 400, "one line, not an expanded document"

    def test_a_duplicate_key_in_configs_is_one_line(self, project):
        finetune = project / "configs" / "train" / "finetune.yaml"
        finetune.write_text(finetune.read_text() + "lr: 0.1\n")
        with pytest.raises(ConfigError, match="found duplicate key lr.*restore it with git"):
            load_config(project, ["train.seed=1"])

    def test_a_bom_and_windows_line_ends_are_read(self, project):
        target = project / "params.yaml"
        text = target.read_text().replace("\n", "\r\n")
        target.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert load_config(project) == load_config(REPO_ROOT)

    @pytest.mark.parametrize("params", [None, "train"])
    def test_dvc_yaml_params_not_a_list_is_one_line(self, project, params):
        pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
        pipeline["stages"]["train"]["params"] = params
        (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        code, _, err = run_in_process(project, "train", "--dry-run")
        assert code == 2
        assert "params must be a list" in err and "Traceback" not in err

    def test_dvc_yaml_naming_an_unknown_key_is_one_line(self, project):
        pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
        pipeline["stages"]["download"]["params"].append("data.no_such_key")
        (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        code, _, err = run_in_process(project, "download", "--dry-run")
        assert code == 2
        assert "'data.no_such_key'" in err and "Traceback" not in err

    @pytest.mark.slow
    def test_help_works_whatever_dvc_yaml_holds(self, project):
        pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
        pipeline["stages"]["train"]["params"] = None
        (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        result = subprocess.run(
            [sys.executable, "-m", "flower_model.commands", "--help"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr

    def test_a_huge_unknown_value_is_cut_in_the_error(self, project):
        _params_with(project, "train.optimizer", "x" * 100_000)
        with pytest.raises(ConfigError, match=r"train.optimizer = 'xxx.*\(100002 chars\)") as err:
            load_config(project)
        assert len(str(err.value)) < 1_000


class TestValues:
    @pytest.mark.parametrize("key", ["train.seed", "preprocess.seed", "evaluate.seed"])
    @pytest.mark.parametrize("value", ["4294967296", "-1"])
    def test_a_seed_outside_numpys_range_is_refused(self, key, value):
        with pytest.raises(ConfigError, match=key):
            load_config(REPO_ROOT, [f"{key}={value}"])

    def test_the_largest_numpy_seed_is_accepted(self):
        assert load_config(REPO_ROOT, ["train.seed=4294967295"]).train.seed == 2**32 - 1

    @pytest.mark.parametrize("value", ["[0]", "[0,-5]", "[]"])
    def test_batch_sizes_below_one_are_refused(self, value):
        with pytest.raises(ConfigError, match="evaluate.batch_sizes"):
            load_config(REPO_ROOT, [f"evaluate.batch_sizes={value}"])

    @pytest.mark.slow
    def test_a_huge_seed_deletes_no_checkpoint(self, project):
        checkpoint = project / "models" / "checkpoints" / "last.ckpt"
        write_text(checkpoint, "a previous run's checkpoint\n")
        code, _, err = run_in_process(project, "train", "train.seed=4294967296")
        assert code == 2 and "train.seed" in err
        assert checkpoint.read_text() == "a previous run's checkpoint\n"

    @pytest.mark.slow
    def test_a_failed_dvc_exp_value_names_the_way_back(self, project, monkeypatch):
        # Under DVC the stage says that params.yaml holds the bad value and how to restore it.
        monkeypatch.setenv("DVC_STAGE", "download")
        _params_with(project, "data.http_retries", 0)
        code, _, err = run_in_process(project, "download")
        assert code == 2
        assert "`flower-model compose` writes configs/' values back" in err


class TestDamagedInputs:
    """Inputs a stage reads that another tool or a hand edit broke: one line naming the file."""

    @pytest.fixture
    def processed(self, tmp_path, tiny_processed):
        shutil.copytree(tiny_processed / "data", tmp_path / "data")
        return tmp_path / "data" / "processed"

    @pytest.mark.parametrize(
        ("file", "content"),
        [
            ("classes.json", "not json"),
            ("classes.json", '{"daisy": 0}'),
            ("classes.json", '["daisy"]'),
            ("classes.json", '["daisy", "daisy"]'),
        ],
    )
    def test_garbage_class_names(self, processed, file, content):
        from flower_model.data.layout import read_classes

        (processed / file).write_text(content)
        with pytest.raises(FlowerModelError, match=f"{file} is damaged.*dvc checkout"):
            read_classes(processed)

    @pytest.mark.parametrize(
        ("file", "array"),
        [
            ("test_images.npy", np.zeros((4, 8, 3), np.uint8)),  # rank 3
            ("test_images.npy", np.zeros((4, 8, 8, 3), np.float32)),
            ("test_labels.npy", np.full(999, 0, np.int64)),  # count differs from the images
            ("test_labels.npy", "out_of_range"),
        ],
    )
    def test_arrays_of_the_wrong_shape_or_labels_out_of_range(self, processed, file, array):
        from flower_model.data.layout import read_split

        if isinstance(array, str):
            labels = np.load(processed / file)
            array = np.where(np.arange(labels.size) == 0, len(CLASS_NAMES), labels)
        np.save(processed / file, array)
        with pytest.raises(FlowerModelError, match=f"{file} is damaged"):
            read_split(processed, "test", len(CLASS_NAMES))

    @pytest.mark.parametrize("content", ["garbage\n\x00\x01", "a,b\n1,2\n", ""])
    def test_a_garbage_manifest(self, processed, content):
        from flower_model.data.layout import read_manifest_files

        (processed / "manifest.csv").write_text(content)
        with pytest.raises(FlowerModelError, match="manifest.csv is damaged"):
            read_manifest_files(processed, "test")

    def test_a_foreign_checkpoint_is_one_line(self, tmp_path):
        import torch

        from flower_model.models.classifier import load_classifier

        foreign = tmp_path / "other.ckpt"
        torch.save({"state_dict": {}, "epoch": 3}, foreign)
        with pytest.raises(FlowerModelError, match="not a flower-model training checkpoint"):
            load_classifier(foreign)

    def test_a_one_class_photo_set_is_refused(self, tmp_path, mini_dataset):
        from flower_model.data.preprocess import list_dataset

        shutil.copytree(mini_dataset / "daisy", tmp_path / "photos" / "daisy")
        config = load_config(REPO_ROOT).preprocess
        with pytest.raises(FlowerModelError, match="one class folder \\(daisy\\).*at least 2"):
            list_dataset(tmp_path / "photos", config)
