"""Tests each rule of config.resolve's table, in this process, without training."""

import dataclasses
import unittest

from quantization import quantize
from runtime import errors
from training import batch_norm_decay
from training import config as config_lib
from training import precision

# A quantization-aware fine-tune with per-tensor weights of a set length:
# the row of the table where every rule departs from its plain default.
QAT_PER_TENSOR_FINE_TUNE = dict(
    dataset_dir='/data', checkpoint_dir='/run', quantize=True,
    weight_quantization=quantize.ASYMMETRIC,
    fine_tune_checkpoint='/float/model.ckpt', number_of_steps=300)


def config(**fields):
  return config_lib.TrainConfig(dataset_dir='/data', checkpoint_dir='/run',
                                **fields)


# A CPU without bfloat16 arithmetic (AVX2, as Zen 2 and Zen 3 have).
AVX2_CPU = ('avx', 'avx2', 'fma')


def resolve(train_config, batch_norms_restored=True, train_examples=1000,
            cpu_features=AVX2_CPU):
  return config_lib.resolve(train_config, lambda: train_examples,
                            batch_norms_restored, cpu_features)


def qat_fine_tune(**changes):
  return dataclasses.replace(
      config_lib.TrainConfig(**QAT_PER_TENSOR_FINE_TUNE), **changes)


class LearningRateTest(unittest.TestCase):

  def test_from_scratch_and_fine_tuning(self):
    self.assertEqual(resolve(config()).learning_rate, 0.045)
    self.assertEqual(resolve(config(quantize=True)).learning_rate, 0.045)
    self.assertEqual(resolve(config(fine_tune_checkpoint='/c')).learning_rate,
                     1e-4)
    self.assertEqual(resolve(qat_fine_tune()).learning_rate, 1e-4)

  def test_flag_wins_even_at_zero(self):
    self.assertEqual(resolve(config(learning_rate=0.1)).learning_rate, 0.1)
    self.assertEqual(resolve(qat_fine_tune(learning_rate=0.0)).learning_rate,
                     0.0)

  def test_decays_every_num_epochs_per_decay_epochs(self):
    # 1000 examples in batches of 64: 15.625 steps an epoch, 39.06 in 2.5.
    plan = resolve(config(), train_examples=1000)
    self.assertEqual(plan.num_train_examples, 1000)
    self.assertEqual(plan.learning_rate_decay_steps, 39)
    plan = resolve(config(batch_size=10, num_epochs_per_decay=0.5))
    self.assertEqual(plan.learning_rate_decay_steps, 50)
    # Shorter than a step: every step.
    plan = resolve(config(batch_size=64, num_epochs_per_decay=0.01))
    self.assertEqual(plan.learning_rate_decay_steps, 1)

  def test_train_examples_counted_only_when_not_given(self):
    def must_not_count():
      raise AssertionError('counted the dataset')

    plan = config_lib.resolve(config(num_train_examples=1281167),
                              must_not_count, True, AVX2_CPU)
    self.assertEqual(plan.num_train_examples, 1281167)
    self.assertEqual(plan.learning_rate_decay_steps, 50045)
    self.assertEqual(resolve(config(), train_examples=77).num_train_examples,
                     77)


class QuantDelayTest(unittest.TestCase):

  def test_rule(self):
    self.assertIsNone(resolve(config()).quant_delay)
    self.assertIsNone(resolve(config(fine_tune_checkpoint='/c',
                                     quant_delay=5)).quant_delay)
    self.assertEqual(resolve(config(quantize=True)).quant_delay, 250000)
    self.assertEqual(resolve(qat_fine_tune()).quant_delay, 0)
    self.assertEqual(resolve(qat_fine_tune(quant_delay=100)).quant_delay, 100)
    self.assertEqual(resolve(config(quantize=True, quant_delay=0)).quant_delay,
                     0)


class DistillationTest(unittest.TestCase):

  def test_on_for_per_tensor_fine_tunes_of_the_whole_model(self):
    for scheme in (quantize.SYMMETRIC, quantize.ASYMMETRIC):
      self.assertEqual(resolve(qat_fine_tune(
          weight_quantization=scheme)).distillation_weight, 1.0)

  def test_off_elsewhere(self):
    for name, train_config in (
        ('per-channel', qat_fine_tune(weight_quantization=quantize.PER_CHANNEL)),
        ('float fine-tune', qat_fine_tune(quantize=False)),
        ('from scratch', qat_fine_tune(fine_tune_checkpoint='')),
        ('new classes', qat_fine_tune(
            checkpoint_exclude_scopes=('MobilenetV1/Logits',)))):
      with self.subTest(name):
        self.assertEqual(resolve(train_config).distillation_weight, 0.0)

  def test_flag_wins(self):
    self.assertEqual(resolve(qat_fine_tune(
        distillation_weight=0.0)).distillation_weight, 0.0)
    self.assertEqual(resolve(qat_fine_tune(
        weight_quantization=quantize.PER_CHANNEL,
        distillation_weight=0.5)).distillation_weight, 0.5)


class BatchNormDecayTest(unittest.TestCase):

  def test_from_scratch_remembers_a_tenth_of_the_run(self):
    # 150 steps: memory 15 steps, decay 1 - 1/15.
    plan = resolve(config(number_of_steps=150))
    self.assertAlmostEqual(plan.batch_norm_decay, 1 - 1 / 15)
    self.assertFalse(plan.keeps_checkpoint_averages)
    self.assertAlmostEqual(resolve(config(
        quantize=True, number_of_steps=1000)).batch_norm_decay, 0.99)

  def test_fine_tune_remembers_the_whole_run(self):
    plan = resolve(config(fine_tune_checkpoint='/c', number_of_steps=1000))
    self.assertAlmostEqual(plan.batch_norm_decay, 0.999)
    # One step: nothing of the checkpoint's averages is kept.
    self.assertEqual(resolve(config(fine_tune_checkpoint='/c',
                                    number_of_steps=1)).batch_norm_decay, 0.0)
    self.assertAlmostEqual(resolve(qat_fine_tune(
        weight_quantization=quantize.PER_CHANNEL,
        number_of_steps=500)).batch_norm_decay, 0.998)

  def test_long_and_open_ended_runs_keep_slims_decay(self):
    for train_config in (config(), config(number_of_steps=100000),
                         config(fine_tune_checkpoint='/c',
                                number_of_steps=100000),
                         qat_fine_tune(number_of_steps=None)):
      self.assertEqual(resolve(train_config).batch_norm_decay, 0.9997)

  def test_per_tensor_qat_fine_tune_keeps_the_checkpoints_averages(self):
    plan = resolve(qat_fine_tune())
    self.assertTrue(plan.keeps_checkpoint_averages)
    self.assertEqual(plan.batch_norm_decay, 1.0)
    self.assertEqual(batch_norm_decay.KEEP, 1.0)
    self.assertTrue(resolve(qat_fine_tune(
        weight_quantization=quantize.SYMMETRIC)).keeps_checkpoint_averages)

  def test_averages_not_kept_when(self):
    for name, train_config, restored, decay in (
        ('decay given', qat_fine_tune(batch_norm_decay=0.99), True, 0.99),
        ('batch norms freeze', qat_fine_tune(freeze_bn_delay=100), True,
         1 - 1 / 300),
        ('open-ended', qat_fine_tune(number_of_steps=None), True, 0.9997),
        ('a batch norm excluded', qat_fine_tune(), False, 1 - 1 / 300),
        ('per-channel', qat_fine_tune(
            weight_quantization=quantize.PER_CHANNEL), True, 1 - 1 / 300),
        ('float', qat_fine_tune(quantize=False), True, 1 - 1 / 300)):
      with self.subTest(name):
        plan = resolve(train_config, batch_norms_restored=restored)
        self.assertFalse(plan.keeps_checkpoint_averages)
        self.assertAlmostEqual(plan.batch_norm_decay, decay)

  def test_flag_wins(self):
    self.assertEqual(resolve(config(batch_norm_decay=0.5,
                                    number_of_steps=10)).batch_norm_decay, 0.5)
    self.assertEqual(resolve(qat_fine_tune(
        batch_norm_decay=1.0)).batch_norm_decay, 1.0)


class FrozenBatchNormsTest(unittest.TestCase):

  def test_freeze_bn_delay_zero_freezes_from_the_start(self):
    plan = resolve(qat_fine_tune(freeze_bn_delay=0))
    self.assertTrue(plan.batch_norms_frozen_from_start)
    # Built in inference mode: nothing left for the rewrite to freeze.
    self.assertIsNone(plan.freeze_bn_delay)

  def test_later_or_never(self):
    plan = resolve(qat_fine_tune(freeze_bn_delay=50))
    self.assertFalse(plan.batch_norms_frozen_from_start)
    self.assertEqual(plan.freeze_bn_delay, 50)
    plan = resolve(qat_fine_tune())
    self.assertFalse(plan.batch_norms_frozen_from_start)
    self.assertIsNone(plan.freeze_bn_delay)

  def test_only_with_quantize(self):
    plan = resolve(config(freeze_bn_delay=0))
    self.assertFalse(plan.batch_norms_frozen_from_start)


class EqualisationTest(unittest.TestCase):

  def test_per_tensor_qat_of_a_float_checkpoint(self):
    self.assertTrue(config_lib.equalizes_ranges(qat_fine_tune(), False))
    self.assertTrue(config_lib.equalizes_ranges(
        qat_fine_tune(weight_quantization=quantize.SYMMETRIC), False))

  def test_not_when(self):
    for name, train_config, has_ranges in (
        ('quantized checkpoint', qat_fine_tune(), True),
        ('per-channel', qat_fine_tune(
            weight_quantization=quantize.PER_CHANNEL), False),
        ('--noequalize_ranges', qat_fine_tune(equalize_ranges=False), False),
        ('float', qat_fine_tune(quantize=False), False)):
      with self.subTest(name):
        self.assertFalse(config_lib.equalizes_ranges(train_config,
                                                     has_ranges))


class WeightRoundingTest(unittest.TestCase):

  def test_rule(self):
    self.assertTrue(config_lib.rounds_weights(qat_fine_tune(), True))
    # Whatever this command's flags: the checkpoint's record decides.
    self.assertTrue(config_lib.rounds_weights(config(), True))
    self.assertFalse(config_lib.rounds_weights(qat_fine_tune(), False))
    self.assertFalse(config_lib.rounds_weights(
        qat_fine_tune(freeze_bn_delay=100), True))
    self.assertFalse(config_lib.rounds_weights(
        qat_fine_tune(freeze_bn_delay=0), True))


class CheckTest(unittest.TestCase):

  def test_accepts_a_complete_config(self):
    config_lib.check(config())
    config_lib.check(qat_fine_tune(distillation_weight=1.0))

  def test_one_line_errors(self):
    for train_config, message in (
        (config_lib.TrainConfig(checkpoint_dir='/run'),
         '--dataset_dir is required'),
        (config_lib.TrainConfig(dataset_dir='/data'),
         '--checkpoint_dir is required'),
        (config(num_classes=1), '--num_classes must be at least 2, got 1'),
        (config(distillation_weight=0.5),
         '--distillation_weight needs a teacher'),
        (config(precision='bfloat16'),
         '--precision=bfloat16 is not one of float32, mixed_bfloat16')):
      with self.subTest(message):
        with self.assertRaisesRegex(errors.UserError, message) as raised:
          config_lib.check(train_config)
        self.assertNotIn('\n', str(raised.exception))


class PrecisionTest(unittest.TestCase):

  def test_mixed_bfloat16_where_the_cpu_multiplies_bfloat16(self):
    for name, cpu_features in (
        ('AVX512-BF16 (Zen 4)', AVX2_CPU + ('avx512f', 'avx512_bf16')),
        ('AMX (Sapphire Rapids)', AVX2_CPU + ('amx_bf16', 'amx_tile')),
        ('Arm BF16 (Graviton 3)', ('asimd', 'sve', 'bf16'))):
      with self.subTest(name):
        plan = resolve(config(), cpu_features=cpu_features)
        self.assertEqual(plan.precision, precision.MIXED_BFLOAT16)
        self.assertIn('natively', plan.precision_reason)
        self.assertEqual(
            resolve(config(fine_tune_checkpoint='/c'),
                    cpu_features=cpu_features).precision,
            precision.MIXED_BFLOAT16)

  def test_float32_elsewhere(self):
    for name, cpu_features in (
        ('AVX2 only', AVX2_CPU), ('AVX-512 without BF16',
                                  AVX2_CPU + ('avx512f', 'avx512_vnni')),
        ('Arm without BF16', ('asimd',)), ('unknown', ())):
      with self.subTest(name):
        plan = resolve(config(), cpu_features=cpu_features)
        self.assertEqual(plan.precision, precision.FLOAT32)
        self.assertIn('no bfloat16 arithmetic', plan.precision_reason)

  def test_quantization_aware_training_defaults_to_float32(self):
    bfloat16_cpu = AVX2_CPU + ('avx512_bf16',)
    for train_config in (config(quantize=True), qat_fine_tune(),
                         qat_fine_tune(weight_quantization=quantize.PER_CHANNEL)):
      plan = resolve(train_config, cpu_features=bfloat16_cpu)
      self.assertEqual(plan.precision, precision.FLOAT32)
      self.assertEqual(
          plan.precision_reason,
          'quantization-aware training defaults to float32; '
          '--precision=mixed_bfloat16 trains it in bfloat16')

  def test_quantization_aware_training_takes_mixed_bfloat16(self):
    for train_config in (
        config(quantize=True, precision=precision.MIXED_BFLOAT16),
        qat_fine_tune(precision=precision.MIXED_BFLOAT16),
        qat_fine_tune(precision=precision.MIXED_BFLOAT16, freeze_bn_delay=5),
        qat_fine_tune(precision=precision.MIXED_BFLOAT16,
                      weight_quantization=quantize.PER_CHANNEL)):
      config_lib.check(train_config)
      plan = resolve(train_config, cpu_features=AVX2_CPU)
      self.assertEqual(plan.precision, precision.MIXED_BFLOAT16)
      self.assertEqual(plan.precision_reason, '--precision=mixed_bfloat16')

  def test_flag_overrides_the_cpu(self):
    self.assertEqual(resolve(config(precision=precision.MIXED_BFLOAT16),
                             cpu_features=AVX2_CPU).precision,
                     precision.MIXED_BFLOAT16)
    plan = resolve(config(precision=precision.FLOAT32),
                   cpu_features=AVX2_CPU + ('amx_bf16',))
    self.assertEqual(plan.precision, precision.FLOAT32)
    self.assertEqual(plan.precision_reason, '--precision=float32')


class FrozenTest(unittest.TestCase):

  def test_config_and_plan_cannot_change(self):
    train_config = config()
    with self.assertRaises(dataclasses.FrozenInstanceError):
      train_config.quantize = True
    with self.assertRaises(dataclasses.FrozenInstanceError):
      resolve(train_config).batch_norm_decay = 0.5


if __name__ == '__main__':
  unittest.main()
