import pytest
import torch

from dqar_lib import tiny_dit, tiny_pixart


@pytest.fixture
def dit():
    return tiny_dit()


@pytest.fixture
def pixart():
    return tiny_pixart()


def dit_inputs(batch=4, size=8, t=500):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g)
    return dict(hidden_states=x, timestep=torch.full((batch,), t), class_labels=torch.arange(batch) % 10)


def pixart_inputs(batch=2, size=8, t=500):
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(batch, 4, size, size, generator=g),
                encoder_hidden_states=torch.randn(batch, 5, 16, generator=g),
                timestep=torch.full((batch,), t), added_cond_kwargs={"resolution": None, "aspect_ratio": None})


def run_steps(model, make_inputs, timesteps=(900, 700, 500, 300, 100), **kw):
    """Call the model once per timestep (a sampler's view of it), returning every output."""
    with torch.no_grad():
        return [model(**make_inputs(t=t, **kw)).sample for t in timesteps]
