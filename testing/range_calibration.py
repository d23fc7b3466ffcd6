"""Range calibration for tests and benchmarks (test support).

Gives the range variables of a freshly built quantized eval graph the values
training would give them, without training, so that tests and benchmarks of
the quantized model start from a realistic model rather than from the
rewrite's initial ranges.
"""

import numpy as np

from quantization import quant_ops
from quantization import quantize


def calibrate_ranges(session, feeds, symmetric_weights=True, graph=None):
  """Sets an eval graph's range variables from its weights and sample inputs.

  What training would set them to, without training: the weight ranges are
  the (folded) weights' min and max (per output channel where the ranges
  are vectors; symmetric about zero there, as training makes them), and then
  the activation
  ranges are the min and max of what reaches each activation's fake quant over
  `feeds`, with the weights quantized. Accuracy is that of post-training
  quantization; benchmarks and tests use it to give a freshly initialized
  model the ranges, and so the requantization scales, of a real one.

  Args:
    session: a session of the eval graph, its other variables initialized or
      restored.
    feeds: feed dicts, one per sample batch.
    symmetric_weights: make per-tensor weight ranges symmetric about zero.
    graph: the eval graph; `session.graph` when None.
  """
  graph = graph or session.graph
  by_scope = quantize.range_variables_by_scope(graph)
  fake_quants = {op.name.rpartition('/')[0]: op for op in graph.get_operations()
                 if op.type in ('FakeQuantWithMinMaxVars',
                                'FakeQuantWithMinMaxVarsPerChannel')}

  def calibrate(scopes, symmetric):
    values = [session.run([fake_quants[s].inputs[0] for s in scopes], feed)
              for feed in feeds]
    for index, scope in enumerate(scopes):
      per_channel = fake_quants[scope].type.endswith('PerChannel')
      # Per channel: over every axis but the last, the channels' axis.
      axes = tuple(range(values[0][index].ndim - 1)) if per_channel else None
      # TFLite needs 0 inside every range, and a range that is not empty.
      low = np.minimum(0.0, np.min([v[index].min(axis=axes) for v in values],
                                   axis=0))
      high = np.maximum(1e-3, np.max([v[index].max(axis=axes)
                                      for v in values], axis=0))
      if symmetric or per_channel:
        high = np.maximum(high, -low)
        low = -high
      by_scope[scope]['min'].load(low, session)
      by_scope[scope]['max'].load(high, session)

  weights = [s for s in by_scope if s.endswith('/' + quant_ops.WEIGHTS_QUANT)]
  calibrate(weights, symmetric_weights)
  # One activation at a time, so that each is measured downstream of ranges
  # already calibrated: through initial ones, small activations would all
  # round to zero.
  for scope in by_scope:
    if scope not in weights:
      calibrate([scope], symmetric=False)
