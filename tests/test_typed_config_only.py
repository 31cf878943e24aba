"""Issue 17: below `main`, code reads only the typed config. The ConfigDict of the command line is
read once, by `configs.typed.parse`; any later read of it fails these tests."""

import ml_collections
import pytest
from test_pipeline import tiny_pipeline_config

from heartlang_jax import stages
from heartlang_jax.configs import dataset as dataset_config
from heartlang_jax.configs import finetune as finetune_config
from heartlang_jax.configs import typed


class ReadAfterValidation(AssertionError):
    pass


class PoisonedConfigDict(ml_collections.ConfigDict):
    """A ConfigDict whose every read raises once `typed.parse` has read it."""

    armed = False

    def _check(self, what):
        if PoisonedConfigDict.armed:
            raise ReadAfterValidation(f"the ConfigDict was read after validation: {what}")

    def __getattr__(self, name):
        if not name.startswith("_"):
            self._check(name)
        return super().__getattr__(name)

    def __getitem__(self, key):
        self._check(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._check(key)
        return super().get(key, default)

    def to_dict(self, *args, **kwargs):
        self._check("to_dict()")
        return super().to_dict(*args, **kwargs)

    def items(self, *args, **kwargs):
        self._check("items()")
        return super().items(*args, **kwargs)

    def __contains__(self, key):
        self._check(key)
        return super().__contains__(key)


@pytest.fixture
def poison(monkeypatch):
    """`poison(config)`: a PoisonedConfigDict copy that `typed.parse` arms after reading it."""
    parse = typed.parse

    def parse_then_arm(cls, config, **kwargs):
        result = parse(cls, config, **kwargs)
        PoisonedConfigDict.armed = True
        return result

    monkeypatch.setattr(typed, "parse", parse_then_arm)
    yield lambda config: PoisonedConfigDict(config.to_dict())
    PoisonedConfigDict.armed = False


def test_the_poisoned_config_catches_a_read_after_validation(poison):
    config = poison(dataset_config.get_config())
    assert config.data.dataset == "ptbxl"  # not armed yet
    typed.parse(stages.STAGES["dataset"].schema, config)
    with pytest.raises(ReadAfterValidation, match="data"):
        _ = config.data


@pytest.mark.slow
def test_every_stage_entry_point_reads_only_the_typed_config(poison, bundled_tfds_dir, tmp_path, capsys):
    """main's path (`stages.run`) for the dataset stage, the pipeline (VQ-HBR, pre-training and the
    sweep's fine-tuning cells through their entry points) and a fine-tuning run on its own."""
    config = dataset_config.get_config()
    config.data.tfds_dir = str(bundled_tfds_dir)
    assert "ptbxl/leads12" in stages.run(poison(config), tmp_path / "data")
    PoisonedConfigDict.armed = False

    config = tiny_pipeline_config(bundled_tfds_dir)
    config.sweep.inits = ("pretrained",)
    assert "| **ours: pre-trained, linear** |" in stages.run(poison(config), tmp_path / "pipeline")
    PoisonedConfigDict.armed = False

    config = finetune_config.get_config("tiny")
    config.data.tfds_dir = str(bundled_tfds_dir)
    config.init_workdir = str(tmp_path / "pipeline" / "pretrain")
    config.mode = "full"
    config.num_train_steps = 2
    result = stages.run(poison(config), tmp_path / "finetune")
    assert result["mode"] == "full" and 0.0 <= result["test_auc"] <= 1.0
    capsys.readouterr()
