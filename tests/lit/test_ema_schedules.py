import math

import pytest
import torch
from torch import nn

from ldm_train.lit.ema import EMA
from ldm_train.lit.lr_schedules import warmup_constant, warmup_cosine


def test_ema_matches_closed_form_with_warmup():
    net = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.9, warmup=True)
    expected = 0.0
    for n in range(30):
        with torch.no_grad():
            net.weight.fill_(float(n + 1))
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * (n + 1)
        ema.update(net)
    assert torch.allclose(ema.shadow.weight, torch.full_like(net.weight, expected), atol=1e-5)
    assert int(ema.num_updates) == 30
    assert not any(p.requires_grad for p in ema.shadow.parameters())


def test_ema_without_warmup_is_plain_decay():
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.5, warmup=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)
    ema.update(net)
    assert ema.shadow.weight.item() == pytest.approx(0.75)


def test_ema_rejects_bad_decay():
    with pytest.raises(ValueError, match="ema_decay=null"):
        EMA(nn.Linear(1, 1), decay=1.5)


def test_lr_schedules():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=110, warmup_steps=10)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 50 / 100)))
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched2 = warmup_constant(opt2, total_steps=0, warmup_steps=4)
    seen = []
    for _ in range(6):
        seen.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert seen == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    assert warmup_constant(opt2, total_steps=0, warmup_steps=0) is None  # constant from step 0: no scheduler
