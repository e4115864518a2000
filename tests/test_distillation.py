"""train.distillation: student and teacher trained together, resumed exactly, evaluated apart."""

import json

import datafiles
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from train import checkpointing, config_checks, distillation, saved_models, tasks, trainer
from train import eval as train_eval
from train.configs import cifar10, mnist


def _config(data_dir, base=mnist, **overrides):
    return datafiles.small_config(
        data_dir, base, **{"num_epochs": 2, "distill": "pkkd", **overrides}
    )


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    # 64 training images: 4 steps of 16 per epoch; 20 test images: 3 eval batches of 8.
    return datafiles.write_idx_dir(tmp_path_factory.mktemp("idx"), num_train=64, num_test=20)


def _state(workdir, step=None):
    mngr = checkpointing.manager(checkpointing.checkpoint_dir(workdir), read_only=True)
    step = mngr.latest_step() if step is None else step
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    mngr.close()
    return restored["state"]


@pytest.fixture(scope="module")
def pkkd_run(idx_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pkkd")
    return workdir, trainer.run(_config(idx_dir), workdir, tasks.distillation)


@pytest.mark.slow
def test_pkkd_trains_both_networks(pkkd_run):
    workdir, result = pkkd_run
    assert result["step"] == 8 and result["count"] == 20
    assert set(result["teacher"]) == {"top1", "top5", "loss"}
    assert json.loads((workdir / "results.json").read_text()) == result
    train_rows = [
        m for m in map(json.loads, open(workdir / "metrics.jsonl")) if m["split"] == "train"
    ]
    for key in ("ce", "kd", "feature", "teacher_loss", "teacher_top1", "top1"):
        assert all(np.isfinite(m[key]) for m in train_rows), key
    assert all(m["feature"] > 0 and m["kd"] > 0 for m in train_rows)
    # Both networks and the alignments moved; the student is the AdderNet, the teacher the CNN.
    state = _state(workdir)
    assert set(state) == {"student", "teacher", "align"}
    assert int(state["student"]["step"]) == int(state["teacher"]["step"]) == 8
    assert "adder" in state["student"]["params"]["conv2"]
    assert "kernel" in state["teacher"]["params"]["conv2"]
    assert set(state["align"]["params"]) == {"conv2", "fc1", "fc2"}
    assert not np.allclose(state["align"]["params"]["fc1"], np.eye(120))


def test_eval_and_load_model_give_either_network(pkkd_run):
    workdir, result = pkkd_run
    student = train_eval.evaluate_checkpoint(str(workdir))
    teacher = train_eval.evaluate_checkpoint(str(workdir), network="teacher")
    assert (student["network"], student["layer"]) == ("student", "adder")
    assert (teacher["network"], teacher["layer"]) == ("teacher", "conv")
    assert student["top1"] == result["top1"] and student["loss"] == pytest.approx(result["loss"])
    assert teacher["top1"] == result["teacher"]["top1"]
    model, variables, config = saved_models.load_model(str(workdir), network="teacher")
    assert config.layer == "conv" and "kernel" in variables["params"]["conv2"]
    images = np.zeros((2, 28, 28, 1), np.float32)
    assert model.apply(variables, images, train=False).shape == (2, 10)
    model, variables, config = saved_models.load_model(str(workdir))
    assert config.layer == "adder" and "adder" in variables["params"]["conv2"]
    # The stored config alone, and the step it came from (the run's newest, step 8).
    saved, checkpoint = saved_models.saved_config(str(workdir))
    assert saved.to_dict() == config.to_dict()
    assert checkpoint == workdir.absolute() / "checkpoints" / "8"


def test_resume_continues_both_networks_exactly(idx_dir, tmp_path):
    """Stopped after step 3 (mid-epoch) and resumed, student, teacher, alignments and their
    optimizer states end bitwise equal to an uninterrupted run's."""
    straight = trainer.run(_config(idx_dir, num_train_steps=6), tmp_path / "a", tasks.distillation)
    trainer.run(_config(idx_dir, num_train_steps=3), tmp_path / "b", tasks.distillation)
    resumed = trainer.run(_config(idx_dir, num_train_steps=6), tmp_path / "b", tasks.distillation)
    assert resumed == straight
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_kd_from_a_finished_teacher(idx_dir, tmp_path):
    """distill="kd": the teacher is the finished CNN run's newest checkpoint, and stays it;
    with distill_features="none" only the logits are distilled."""
    cnn = trainer.run(
        _config(idx_dir, distill="none", layer="conv", num_train_steps=4),
        tmp_path / "cnn",
        tasks.classification,
    )
    config = _config(
        idx_dir,
        distill="kd",
        teacher_workdir=str(tmp_path / "cnn"),
        num_train_steps=3,
        distill_features="none",  # logits only: no alignments in the state
    )
    result = trainer.run(config, tmp_path / "kd", tasks.distillation)
    assert result["teacher"]["top1"] == cnn["top1"]
    finished, state = _state(tmp_path / "cnn"), _state(tmp_path / "kd")
    assert not state["align"]["params"]
    jax.tree.map(np.testing.assert_array_equal, state["teacher"]["params"], finished["params"])
    jax.tree.map(
        np.testing.assert_array_equal, state["teacher"]["batch_stats"], finished["batch_stats"]
    )
    # Started again, the finished run restores its teacher with the rest of its state: the
    # teacher run's stored config is checked, its arrays are not read.
    (tmp_path / "cnn" / "checkpoints" / "4" / "state").rename(tmp_path / "cnn_state")
    again = trainer.run(config, tmp_path / "kd", tasks.distillation)
    assert again["teacher"]["top1"] == cnn["top1"] and again["top1"] == result["top1"]
    # An AdderNet run is no teacher.
    bad = _config(idx_dir, distill="kd", teacher_workdir=str(tmp_path / "kd"))
    with pytest.raises(config_checks.ConfigError, match="the teacher must be the CNN"):
        trainer.run(bad, tmp_path / "bad", tasks.distillation)


def _cifar_config(data_dir, data_format):
    # One config for both formats: the second run's steps come from the compilation cache.
    return _config(
        data_dir,
        base=cifar10,
        model="lenet5_bn",
        data_format=data_format,
        worker_count=0,
        num_train_steps=2,
        distill_features="plain",
        distill_layers="conv2, fc2",
    )


@pytest.mark.slow
def test_cifar_pickle_files(tmp_path):
    """CIFAR-10 pickles, 32x32x3 inputs; plain features at two chosen layers."""
    data = datafiles.write_cifar10_dir(tmp_path / "data", num_train=32, num_test=8)
    result = trainer.run(_cifar_config(data, "cifar_pickle"), tmp_path / "w", tasks.distillation)
    assert result["step"] == 2 and "teacher" in result
    assert set(_state(tmp_path / "w")["align"]["params"]) == {"conv2", "fc2"}


def test_tfds_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=32):
        result = trainer.run(_cifar_config(None, "tfds"), tmp_path / "w", tasks.distillation)
    assert result["step"] == 2 and "teacher" in result


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"distill": "fitnets"}, "config.distill='fitnets' is invalid: expected one of"),
        ({"distill_features": "rbf"}, "config.distill_features='rbf' is invalid"),
        ({"kd_temperature": 0.0}, "config.kd_temperature=0.0 is invalid: expected a number > 0"),
        ({"sigma_a": -1.0}, "config.sigma_a=-1.0 is invalid"),
        ({"kd_weight": -0.5}, "config.kd_weight=-0.5 is invalid: expected a number >= 0"),
        (
            {"layer": "conv"},
            "config.layer='conv' is invalid: expected 'adder' with distill='pkkd'",
        ),
        (
            {"teacher_workdir": "/tmp/t"},
            "config.teacher_workdir='/tmp/t' is invalid: expected None",
        ),
        ({"distill": "kd"}, "config.teacher_workdir=None is invalid: expected the workdir"),
        (
            {"distill": "kd", "teacher_workdir": "/nonexistent"},
            "it has no checkpoints/",
        ),
    ],
)
def test_bad_distill_configs_refused_in_one_line(overrides, message):
    config = _config("/tmp")
    config.update(overrides)
    with pytest.raises(config_checks.ConfigError) as e:
        config_checks.validate(config, device_count=1)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_distilled_layer_refused(idx_dir, tmp_path):
    config = _config(idx_dir, distill_layers="conv2,conv9")
    with pytest.raises(config_checks.ConfigError, match="no conv, dense or adder layer 'conv9'"):
        trainer.run(config, tmp_path, tasks.distillation)


def test_a_classification_workdir_is_not_resumed_as_distillation(tmp_path):
    mngr = checkpointing.manager(tmp_path)
    plain = _config("/tmp", distill="none")
    checkpointing.save(mngr, 1, {"x": np.zeros(2)}, data_iterator=None, config=plain)
    with pytest.raises(config_checks.ConfigError, match="distill='none' there, 'pkkd' here"):
        checkpointing.check_resumable(mngr, _config("/tmp"))
    mngr.close()


def test_network_choice():
    with pytest.raises(ValueError, match="network must be one of student, teacher"):
        distillation.network(None, "both")


def test_skip_nonfinite_skips_the_whole_step(idx_dir, tmp_path):
    """skip_nonfinite: a step whose student, alignment or teacher went non-finite changes no
    state (`model_state.keep_if_finite` on each), and every step still counts."""
    config = _config(
        idx_dir, learning_rate=1e38, adaptive_lr=False, skip_nonfinite=True, num_train_steps=3
    )
    trainer.run(config, tmp_path, tasks.distillation)
    logged = [m for m in map(json.loads, open(tmp_path / "metrics.jsonl")) if m["split"] == "train"]
    assert logged[-1]["skipped_steps"] >= 1
    state = _state(tmp_path)
    for part in ("student", "teacher", "align"):
        assert int(state[part]["step"]) == 3, part
        for leaf in jax.tree.leaves(state[part]["params"]):
            assert np.all(np.isfinite(leaf)), part


@pytest.mark.slow
def test_pkkd_steps_follow_a_pytorch_pkkd_in_float64():
    """ResNet-20: the AdderNet student (the authors' adder backward and SGD), its CNN as the
    progressive teacher and the three stage alignments, trained by PKKD's loss written in
    PyTorch (`benchmarks/torch_trajectory.py`) beside `distillation.train_step`, from the same
    weights, both in float64: after 3 steps every parameter, BatchNorm statistic and alignment
    of the three agrees to 1e-5 of its largest value, and every one of them moved."""
    pytest.importorskip("torch")
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import torch_trajectory as tt
    finally:
        sys.path.pop(0)

    student, teacher, s_state, t_state, batches, info = tt.make_pkkd_run(seed=0, steps=3)
    want = tt.as_pkkd_variables(
        *tt.torch_pkkd_steps(student, teacher, s_state, t_state, batches, info, np.float64)
    )
    got = tt.adderjax_pkkd_steps(s_state, t_state, batches, info, np.float64)
    errors = tt.errors(got, want)
    assert len(errors) == len(jax.tree.leaves(want)) and max(errors.values()) < 1e-5, errors
    start = tt.as_pkkd_variables(
        s_state, t_state, {k: np.eye(len(a)) for k, a in want["align"].items()}
    )
    assert min(tt.errors(start, want).values()) > 1e-6  # every leaf moved
