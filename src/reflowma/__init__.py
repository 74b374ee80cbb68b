"""reflowma: reflow distillation with marginal distribution alignment.

Conventions (everywhere in the package): time t = 0 is noise, t = 1 is data;
x_t = (1 - t) z + t x; ODE dx/dt = v(x, t) integrated from 0 to 1; tensors are
``[batch, *data_shape]`` and ``t`` is ``[batch]``.
"""

__version__ = "0.1.0"
