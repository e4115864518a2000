"""`train.eval`: a checkpoint evaluated as training evaluated it, by workdir or by path,
where only the test split is on disk."""

import pathlib
import shutil

import datafiles
import pytest

from train import checkpointing, config_checks, tasks, trainer
from train import eval as train_eval


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    # 64 training images: 4 steps of 16 per epoch; 20 test images: 3 eval batches of 8.
    return datafiles.write_idx_dir(tmp_path_factory.mktemp("idx"), num_train=64, num_test=20)


def test_matches_training_eval(idx_dir, tmp_path):
    result = trainer.run(
        datafiles.small_config(idx_dir, num_train_steps=4), tmp_path, tasks.classification
    )
    again = train_eval.evaluate_checkpoint(str(tmp_path))
    assert again["top1"] == result["top1"] and again["count"] == 20
    by_path = train_eval.evaluate_checkpoint(checkpoint=str(tmp_path / "checkpoints" / "4"))
    assert by_path["loss"] == pytest.approx(result["loss"])
    with pytest.raises(config_checks.ConfigError, match="exactly one"):
        train_eval.evaluate_checkpoint()
    with pytest.raises(config_checks.ConfigError, match="no checkpoint 7 in"):
        train_eval.evaluate_checkpoint(checkpoint=str(tmp_path / "checkpoints" / "7"))


def test_reads_only_the_test_split(idx_dir, tmp_path):
    """A workdir evaluated where only the test files are: the model, the p it trained with
    (from the steps per epoch stored in the checkpoint) and the result are the training's."""
    config = datafiles.small_config(
        idx_dir, num_train_steps=4, p_init=2.0, p_final=1.0, p_decay_epochs=2
    )
    result = trainer.run(config, tmp_path / "w", tasks.classification)
    test_only = tmp_path / "test_only"
    test_only.mkdir()
    for path in pathlib.Path(idx_dir).glob("t10k-*"):
        shutil.copy(path, test_only / path.name)
    again = train_eval.evaluate_checkpoint(str(tmp_path / "w"), data_dir=str(test_only))
    assert again["top1"] == result["top1"] and again["loss"] == pytest.approx(result["loss"])
    # The p of its last step (epoch 0 of 2: p_init), not p_final.
    meta = checkpointing.read_meta(
        checkpointing.manager(tmp_path / "w" / "checkpoints", read_only=True), 4
    )
    assert meta["steps_per_epoch"] == 4
    assert train_eval.checkpoint_p(config, 4, meta) == 2.0
    with pytest.raises(Exception, match="train"):  # the training split would be needed
        trainer.run(datafiles.small_config(test_only), tmp_path / "fresh", tasks.classification)
