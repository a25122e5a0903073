"""The CPU live-bytes accounting against peaks computed by hand."""

import torch

from petlbench.measure.memory import CpuAccountingMeter, host_batches, storage_bytes, training_state
from petlbench.measure.phase import training_phase

F32 = 4
CPU = torch.device("cpu")


def test_chain_of_matmuls_forward_and_backward():
    b, d_in, d_hidden, d_out = 8, 64, 32, 16
    w1 = torch.randn(d_in, d_hidden, requires_grad=True)
    w2 = torch.randn(d_hidden, d_out, requires_grad=True)
    with CpuAccountingMeter().phase({"parameters": [w1, w2]}) as peak:
        x = torch.randn(b, d_in)
        h = x @ w1
        y = h @ w2
        loss = y.sum()
        loss.backward()
    # Nothing is freed before backward ends (x, h, y are held by the caller), so the peak is
    # the sum of everything created: x, h, y, loss, d(loss) (a scalar; its expansion to
    # y's shape is a view), dW2 = h^T dy, dh = dy W2^T, dW1 = x^T dh.
    created = [b * d_in, b * d_hidden, b * d_out, 1, 1, d_hidden * d_out, b * d_hidden, d_in * d_hidden]
    assert peak.breakdown == {"parameters": (d_in * d_hidden + d_hidden * d_out) * F32, "transient_peak": sum(created) * F32}
    assert peak.peak_bytes == sum(peak.breakdown.values())


def test_freed_tensors_leave_the_live_count():
    with CpuAccountingMeter().phase({}) as peak:
        for _ in range(5):
            a = torch.ones(1000)  # 4000 bytes, freed when rebound
            b = a * 2  # 4000 bytes
            del a, b
    # at most one `a` and one `b` alive at once
    assert peak.peak_bytes == 8000


def test_views_and_inplace_ops_count_once_and_resident_storage_not_again():
    base = torch.zeros(256)
    with CpuAccountingMeter().phase({"parameters": [base]}) as peak:
        v = base[:10]  # a view of a resident tensor
        v.add_(1)
        c = torch.empty(100)
        c.view(10, 10).mul_(0)
    assert peak.breakdown == {"parameters": 256 * F32, "transient_peak": 100 * F32}


def test_host_side_data_is_not_counted_but_its_copy_to_the_device_is():
    """Batches read from host data (slices, gathers, a DataLoader's output) are not device
    memory; the copy the step reads is, once per batch alive."""
    data = torch.zeros(64, 100)  # 400 bytes per row, created before the phase, not registered

    def batches():
        for i in range(0, 64, 16):
            yield data[i : i + 16] * 1, data[torch.arange(i, i + 8)]  # a new tensor and a gather: host side

    with CpuAccountingMeter().phase({}) as peak:
        for computed, gathered in host_batches(batches()):
            copies = computed.to("cpu", copy=True), gathered.to("cpu", copy=True)
            del copies
    assert peak.peak_bytes == (16 + 8) * 400


def test_shared_storage_counted_once():
    t = torch.zeros(10)
    assert storage_bytes([t, t[:5], t.view(2, 5)]) == 40


def _tiny_training():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    opt = torch.optim.AdamW(model.parameters(), foreach=True)

    def step(batch):
        model(batch["x"]).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, opt, step


def _batches(n: int = 16):
    return iter(lambda: {"x": torch.randn(n, 32)}, None)


def test_identical_figures_run_to_run():
    def peak():
        model, opt, step = _tiny_training()
        return training_phase(step, _batches(), CPU, CpuAccountingMeter(), lambda: training_state(model, opt)).peak.breakdown

    assert peak() == peak()


def test_the_phase_counts_the_batch_copy_and_not_the_host_batch():
    """A step that reads nothing: the window's transient peak is exactly the device copy of
    one batch (16 x 32 fp32); the host batch (made under `host_side`) is not counted."""
    result = training_phase(lambda batch: None, _batches(), CPU, CpuAccountingMeter(), lambda: ({}, []), measured=3)
    assert result.peak.breakdown == {"transient_peak": 16 * 32 * F32}


def test_the_phase_reads_the_resident_state_after_the_warmup_and_times_every_part():
    model, opt, step = _tiny_training()
    result = training_phase(step, _batches(), CPU, CpuAccountingMeter(), lambda: training_state(model, opt), measured=2, timed=3)
    params = sum(p.numel() for p in model.parameters()) * F32
    assert result.peak.breakdown["parameters"] == params
    assert result.peak.breakdown["optimizer_state"] == 2 * params + 4 * 4  # exp_avg, exp_avg_sq; a step counter per parameter
    assert (len(result.warmup.steps), len(result.measured.steps), len(result.timed.steps)) == (1, 2, 3)
    assert len(result.timed.waits) == 3 and all(t >= 0 for t in result.timed.waits + result.timed.steps)


def test_training_state_counts_gradients_that_were_kept():
    model = torch.nn.Linear(10, 4)  # 44 parameters
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 10)).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=False)  # a regression that keeps the gradients allocated
    state = {k: storage_bytes(v) for k, v in training_state(model, opt)[0].items()}
    assert state == {"parameters": 44 * F32, "gradients": 44 * F32, "optimizer_state": 44 * F32}
    opt.zero_grad(set_to_none=True)
    assert storage_bytes(training_state(model)[0]["gradients"]) == 0


def test_step_counters_stay_out_when_they_live_on_the_host():
    model, opt, step = _tiny_training()
    step({"x": torch.randn(4, 32)})
    categories, host = training_state(model, opt, steps_on_host=True)
    assert len(host) == 4 and all(t.numel() == 1 for t in host)  # one step counter per parameter
    assert storage_bytes(categories["optimizer_state"]) == 2 * sum(p.numel() for p in model.parameters()) * F32


def test_the_transient_peak_splits_into_the_gradients_alive_at_its_moment_and_the_rest():
    """Byte sizes chosen by hand: the peak (170) comes after one gradient (40) was made and
    before the second; a gradient made before the phase's peak and freed is not counted."""
    meter = CpuAccountingMeter()
    with meter.phase({}) as peak:
        early = torch.zeros(30, dtype=torch.uint8)
        meter.mark_gradient(early)
        del early  # a gradient freed before the peak
        a = torch.zeros(100, dtype=torch.uint8)
        g = torch.zeros(40, dtype=torch.uint8)
        meter.mark_gradient(g)
        del a
        b, c = torch.zeros(70, dtype=torch.uint8), torch.zeros(60, dtype=torch.uint8)  # live 40 + 70 + 60
        del b, c
        h = torch.zeros(10, dtype=torch.uint8)
        meter.mark_gradient(h)
    assert (peak.breakdown["transient_peak"], peak.transient_gradients) == (170, 40)
    with meter.phase({}) as unmarked:
        torch.zeros(8)
    assert unmarked.transient_gradients is None
