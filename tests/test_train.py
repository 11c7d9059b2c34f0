"""The training loop's optimisers and schedules: what a fine-tune recipe names is what runs."""

import pytest
import torch

from tests.helpers import synthetic_images, tiny_net
from trimflow import FlowError
from trimflow.train import TrainConfig, _optimizer, train


def _lrs_and_betas(monkeypatch, cfg: TrainConfig, n: int = 64) -> tuple[list[float], list[float], list[str]]:
    """Learning rate and beta1 at every optimiser step of a short run, and the optimiser classes that stepped."""
    lrs, betas, kinds = [], [], []
    for cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        original = cls.step

        def step(self, *a, _original=original, _cls=cls, **k):
            if type(self) is not _cls:  # AdamW subclasses Adam: count each step once
                return _original(self, *a, **k)
            lrs.append(self.param_groups[0]["lr"])
            betas.append(self.param_groups[0].get("betas", (0.0,))[0])
            kinds.append(type(self).__name__)
            return _original(self, *a, **k)

        monkeypatch.setattr(cls, "step", step)
    model = tiny_net()
    train(model, synthetic_images(n, shape=(1, 28, 28)), cfg, progress=False)
    return lrs, betas, kinds


def test_onecycle_warms_up_peaks_and_anneals(monkeypatch):
    cfg = TrainConfig(epochs=5, batch_size=8, lr=1e-3, optimizer="adamw", schedule="onecycle", weight_decay=0.01)
    lrs, betas, kinds = _lrs_and_betas(monkeypatch, cfg)
    assert set(kinds) == {"AdamW"}
    assert len(lrs) == 40  # 5 epochs x 8 batches, one scheduler step each
    assert lrs[0] == pytest.approx(1e-3 / 25)  # torch's OneCycleLR defaults: start at max / 25
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(1e-3, rel=0.02) and 0.2 * len(lrs) <= peak <= 0.4 * len(lrs)
    assert lrs[-1] < 1e-3 / 100  # annealed to near zero
    assert min(betas) == pytest.approx(0.85, abs=0.01) and betas[0] == pytest.approx(0.95)  # beta1 cycles too


def test_cosine_without_warmup_starts_at_the_peak(monkeypatch):
    lrs, _, kinds = _lrs_and_betas(monkeypatch, TrainConfig(epochs=2, batch_size=8, lr=1e-3, optimizer="adam"))
    assert set(kinds) == {"Adam"}
    assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True)


def test_adamw_decays_weights_apart_from_the_gradient():
    # a zero gradient: AdamW still shrinks the weights by lr * wd (decoupled); Adam's L2 term would go through its
    # normalised step instead (a full lr-sized step)
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    o = _optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.5, lr=0.1))
    model.weight.grad = torch.zeros_like(model.weight)
    o.step()
    assert torch.allclose(model.weight, torch.full_like(model.weight, 1.0 - 0.1 * 0.5))


def test_bad_recipes_are_one_line():
    with pytest.raises(FlowError, match="warms up by itself"):
        TrainConfig(schedule="onecycle", warmup_steps=10)
    with pytest.raises(FlowError, match="optimizer must be one of sgd, adam, adamw, got 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(FlowError, match="schedule must be one of cosine, constant, onecycle, got 'step'"):
        TrainConfig(schedule="step")
