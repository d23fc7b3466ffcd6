"""Range calibration for tests and benchmarks (test support).

Gives the range variables of a freshly built quantized eval graph the values
training would give them, without training, so that tests and benchmarks of
the quantized model start from a realistic model rather than from the
rewrite's initial ranges.
"""

import quantize


def calibrate_ranges(session, feeds, symmetric_weights=True, graph=None):
  """Sets an eval graph's range variables from its weights and sample inputs.

  What training would set them to, without training: the weight ranges are
  the (folded) weights' min and max, made symmetric about zero as
  `quantize.create_training_graph` does by default, and then the activation
  ranges are the min and max of what reaches each activation's fake quant over
  `feeds`, with the weights quantized. Accuracy is that of post-training
  quantization; benchmarks and tests use it to give a freshly initialized
  model the ranges, and so the requantization scales, of a real one.

  Args:
    session: a session of the eval graph, its other variables initialized or
      restored.
    feeds: feed dicts, one per sample batch.
    symmetric_weights: make weight ranges symmetric about zero.
    graph: the eval graph; `session.graph` when None.
  """
  graph = graph or session.graph
  by_scope = quantize.range_variables_by_scope(graph)
  fake_quants = {op.name.rpartition('/')[0]: op for op in graph.get_operations()
                 if op.type == 'FakeQuantWithMinMaxVars'}

  def calibrate(scopes, symmetric):
    values = [session.run([fake_quants[s].inputs[0] for s in scopes], feed)
              for feed in feeds]
    for index, scope in enumerate(scopes):
      # TFLite needs 0 inside every range, and a range that is not empty.
      low = min(0.0, min(float(v[index].min()) for v in values))
      high = max(1e-3, max(float(v[index].max()) for v in values))
      if symmetric:
        high = max(high, -low)
        low = -high
      by_scope[scope]['min'].load(low, session)
      by_scope[scope]['max'].load(high, session)

  weights = [s for s in by_scope if s.endswith('/' + quantize.WEIGHTS_QUANT)]
  calibrate(weights, symmetric_weights)
  # One activation at a time, so that each is measured downstream of ranges
  # already calibrated: through initial ones, small activations would all
  # round to zero.
  for scope in by_scope:
    if scope not in weights:
      calibrate([scope], symmetric=False)
