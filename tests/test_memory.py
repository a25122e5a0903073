"""The CPU live-bytes accounting against peaks computed by hand."""

import torch

from petlbench.measure.memory import CpuAccountingMeter, host_batches, storage_bytes

F32 = 4


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


def test_identical_figures_run_to_run():
    def step():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
        opt = torch.optim.AdamW(model.parameters(), foreach=True)
        model(torch.randn(16, 32)).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state = [t for s in opt.state.values() for t in s.values()]
        with CpuAccountingMeter().phase({"parameters": list(model.parameters()), "optimizer_state": state}) as peak:
            model(torch.randn(16, 32)).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return peak.breakdown

    assert step() == step()


def test_training_state_counts_gradients_that_were_kept():
    from petlbench.measure.memory import training_state

    model = torch.nn.Linear(10, 4)  # 44 parameters
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 10)).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=False)  # a regression that keeps the gradients allocated
    state = {k: storage_bytes(v) for k, v in training_state(model, opt).items()}
    assert state == {"parameters": 44 * F32, "gradients": 44 * F32, "optimizer_state": 44 * F32}
    opt.zero_grad(set_to_none=True)
    assert storage_bytes(training_state(model)["gradients"]) == 0
