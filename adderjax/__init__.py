"""adderjax: AdderNets in JAX and Flax.

The adder op (`adder_conv`, `adder_dense`) with the AdderNet gradients, its plain reference
(`adderjax.reference`), Flax layers (`adderjax.nn` for linen, `adderjax.nnx` for NNX), the
adaptive-learning-rate optimizer (`adderjax.optim`), the model zoo (`adderjax.models`), the
super-resolution networks (`adderjax.sr_models`), PKKD's kernel maps and losses
(`adderjax.distill`), the op and energy counts (`adderjax.counting`) and DeepShift's
bit-shift weights as ShiftAddNet computes them (`adderjax.shift`).
"""

from adderjax import models as models
from adderjax import nn as nn
from adderjax import nnx as nnx
from adderjax import optim as optim
from adderjax import reference as reference
from adderjax import shift as shift
from adderjax.counting import count_ops as count_ops
from adderjax.ops import (
    adder_conv as adder_conv,
)
from adderjax.ops import (
    adder_dense as adder_dense,
)
from adderjax.ops import (
    available_implementations as available_implementations,
)
from adderjax.ops import (
    default_implementation as default_implementation,
)
from adderjax.ops import (
    unavailable_implementations as unavailable_implementations,
)
from adderjax.shift import shift_weights as shift_weights

__version__ = "0.1.0"
