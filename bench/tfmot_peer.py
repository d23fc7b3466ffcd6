"""The quantization-aware peer: tfmot QAT of a tf_keras model, set up well.

bench/qat_bench.py fine-tunes it for accuracy against ours, and
bench/train_bench.py --quantize times its training step against ours; both
quantize through `quantize`, so that the peer whose speed is quoted is the
one whose accuracy was checked.
"""


def quantize(tfmot, tf_keras, model):
  """tfmot QAT of `model` as a knowledgeable user sets it up.

  quantize_model's defaults collapse a short fine-tune: its moving-average
  activation ranges start at [-6, 6] and average with decay 0.999 without
  correcting the start, so after 300 steps the logits' range is about
  [-7, 10] while the float model's top logits are ~12-28; they saturate and
  tie. tfmot's per-layer route fixes it: the logits layer (conv_preds) gets
  a QuantizeConfig whose output range is that of all values seen
  (AllValuesQuantizer); every other layer keeps the defaults.

  Args:
    tfmot: the tensorflow_model_optimization module.
    tf_keras: the tf_keras module.
    model: a tf_keras.applications.MobileNet.

  Returns:
    The quantization-aware tf_keras model, to compile and fit.
  """
  keras_quant = tfmot.quantization.keras
  quantizers = keras_quant.quantizers

  class LogitsQuantizeConfig(keras_quant.QuantizeConfig):
    """Per-tensor symmetric 8-bit kernel; output range from all values."""

    def get_weights_and_quantizers(self, layer):
      return [(layer.kernel, quantizers.LastValueQuantizer(
          num_bits=8, per_axis=False, symmetric=True, narrow_range=True))]

    def get_activations_and_quantizers(self, layer):
      return []

    def set_quantize_weights(self, layer, quantize_weights):
      layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
      pass

    def get_output_quantizers(self, layer):
      return [quantizers.AllValuesQuantizer(
          num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
      return {}

  def annotate_logits(layer):
    if layer.name == 'conv_preds':
      return keras_quant.quantize_annotate_layer(
          layer, quantize_config=LogitsQuantizeConfig())
    return layer

  annotated = keras_quant.quantize_annotate_model(
      tf_keras.models.clone_model(model, clone_function=annotate_logits))
  with keras_quant.quantize_scope(
      {'LogitsQuantizeConfig': LogitsQuantizeConfig}):
    return keras_quant.quantize_apply(annotated)
