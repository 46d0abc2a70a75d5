"""Behaviour held to the reference values of tests/reference/values.json (written by
``python -m tests.reference.record``): training through each engine, samples, in-painting through
both faces, and the scores of a committed checkpoint. On the machine that recorded them (same CPU,
torch and thread count) every tensor must be bit-identical; elsewhere, where kernels may round
differently, within 1e-4 relative of the recorded float64 sums and leading values."""

import json

import pytest
import torch

from tests.reference import record

RECORDED = json.loads(record.VALUES.read_text())


def assert_matches(got: dict, want: dict, where: str) -> None:
    assert set(got) == set(want), f"{where}: other tensors than recorded"
    same_machine = record.machine() == RECORDED["machine"]
    for name, expected in want.items():
        actual = got[name]
        if isinstance(expected, list):  # annealing: [sigma, lr] per layer
            torch.testing.assert_close(torch.tensor(actual, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                                       rtol=0 if same_machine else 1e-4, atol=0, msg=f"{where}/{name}")
            continue
        assert (actual["dtype"], actual["shape"]) == (expected["dtype"], expected["shape"]), f"{where}/{name}"
        if same_machine:
            assert actual["sha256"] == expected["sha256"], f"{where}/{name} is not bit-identical to the recorded value"
        else:
            for key in ("sum", "abs_sum", "head"):
                torch.testing.assert_close(torch.tensor(actual[key], dtype=torch.float64), torch.tensor(expected[key], dtype=torch.float64),
                                           rtol=1e-4, atol=1e-5, msg=f"{where}/{name}/{key}")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(RECORDED["machine"]["threads"])
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def eager():
    module, _ = record.train_b(1)
    return module


def test_training_one_step_per_call_matches_the_reference(eager):
    assert_matches(record.training_values(eager), RECORDED["train/eager"], "train/eager")


def test_training_steps_per_call_matches_the_reference():
    module, _ = record.train_b(4)
    assert_matches(record.training_values(module), RECORDED["train/steps_per_call"], "train/steps_per_call")


def test_samples_match_the_reference(eager):
    assert_matches(record.sample_values(eager), RECORDED["samples"], "samples")


def test_inpainting_through_both_faces_gives_the_same_pixels_as_recorded(eager):
    faces = record.inpaint_faces(eager)
    assert torch.equal(faces["task"], faces["estimator"]), "the Hydra task and the estimator fill the same mask differently"
    assert torch.equal(faces["task"][..., :14], record.images(8, seed=4)[..., :14])  # the known left half is kept bit for bit
    assert_matches({name: record.digest(t) for name, t in faces.items()}, RECORDED["inpaint"], "inpaint")


def test_a_checkpoint_of_earlier_code_loads_and_scores_as_recorded():
    assert_matches(record.checkpoint_values(record.CHECKPOINT), RECORDED["checkpoint"], "checkpoint")
