"""Every benchmark records whether other work shared the machine while it ran
(harness.metrics.machine) in its ``extra_info``, and warns when it did: a timing taken
beside another job can be many times the quiet one."""

import warnings

import pytest
import torch

from harness.metrics.machine import SharedMachine, busy_warning


@pytest.fixture(autouse=True)
def shared_machine(request):
    with SharedMachine(torch.get_num_threads()) as shared:
        yield
    bench = request.node.funcargs.get("benchmark")
    if bench is not None:
        bench.extra_info.update(shared.reading)
    warning = busy_warning(shared.reading, request.node.name)
    if warning:
        warnings.warn(warning, stacklevel=1)
