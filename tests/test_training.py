import pytest
import torch

from harness.models import build_encoder
from harness.training import RunningMeans, teacher_and_student


def test_running_means_weight_each_batch_by_its_size():
    running = RunningMeans()
    running.add(3, loss=1.0, clone=0.0)
    running.add(1, loss=5.0, clone=4.0)
    assert running.images == 4
    assert running.means() == pytest.approx({"loss": 2.0, "clone": 1.0})


def test_teacher_is_frozen_and_student_is_a_fresh_copy_of_its_architecture():
    torch.manual_seed(0)
    suspect = build_encoder("resnet18", width=4)
    teacher, student = teacher_and_student(suspect, torch.device("cpu"))
    assert teacher is suspect and not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert student.training and all(p.requires_grad for p in student.parameters())
    assert student.state_dict().keys() == teacher.state_dict().keys()
    assert not torch.equal(student.stem[0].weight, teacher.stem[0].weight)
