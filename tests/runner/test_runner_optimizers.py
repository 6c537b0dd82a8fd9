"""Every optimizer kohya names trains: built by the runner over LoRA-shaped parameter groups, one step moves the
weights, its state round-trips through state_dict (resume), and the file's ss_optimizer is kohya's class name."""

from __future__ import annotations

from typing import Any

import pytest

from gpurun import optimizers
from gpurun.errors import ConfigError
from gpurun.runner.optim import make_optimizer

torch = pytest.importorskip("torch")

#: arguments that exercise each family's parsing on the way to the class
ARGS = {"DAdaptAdam": ["decouple=True", "weight_decay=0.1", "betas=0.9,0.91"], "Lion": ["weight_decay=0.01"]}


def groups(lr: float) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    unet = [torch.nn.Parameter(torch.randn(8, 64)), torch.nn.Parameter(torch.randn(64, 8))]
    text = [torch.nn.Parameter(torch.randn(4, 32))]
    return [{"params": unet, "lr": lr, "name": "unet"}, {"params": text, "lr": lr, "name": "text_encoder"}]


@pytest.mark.parametrize("name", [s.name for s in optimizers.OPTIMIZERS.values()])
@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")
def test_each_optimizer_steps_and_resumes(name: str) -> None:
    spec = optimizers.optimizer(name)
    lr = 1.0 if spec.adaptive else 1e-3
    params = groups(lr)
    optimizer = make_optimizer(name, params, ARGS.get(name, []), "cpu")
    assert f"{type(optimizer).__module__}.{type(optimizer).__name__}" == spec.class_path
    before = [p.detach().clone() for g in params for p in g["params"]]
    for _ in range(2):
        for group in params:
            for p in group["params"]:
                p.grad = torch.randn_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    after = [p.detach() for g in params for p in g["params"]]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(torch.isfinite(a).all() for a in after)
    again = make_optimizer(name, groups(lr), ARGS.get(name, []), "cpu")
    again.load_state_dict(optimizer.state_dict())
    assert again.state_dict()["param_groups"][0]["lr"] == optimizer.state_dict()["param_groups"][0]["lr"]


def test_a_bad_argument_is_a_config_error_before_the_class_is_built() -> None:
    with pytest.raises(ConfigError, match="'use_triton' is not an argument of DAdaptLion"):
        make_optimizer("DAdaptLion", groups(1.0), ["use_triton=True"], "cpu")
