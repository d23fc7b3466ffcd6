"""Tests the variant table against the seed README's table (SPEC.md)."""

import unittest

from model import variants


class VariantsTest(unittest.TestCase):

  def test_sixteen_variants_of_four_widths_and_resolutions(self):
    self.assertEqual(variants.WIDTHS, (1.0, 0.75, 0.5, 0.25))
    self.assertEqual(variants.RESOLUTIONS, (224, 192, 160, 128))
    self.assertEqual(
        [(v.depth_multiplier, v.resolution) for v in variants.VARIANTS],
        [(w, r) for w in variants.WIDTHS for r in variants.RESOLUTIONS])

  def test_rows_of_the_seed_table(self):
    # Rows of the seed README, as printed there.
    seed_rows = {
        'MobileNet_v1_1.0_224': (569, 4.24, 70.9, 89.9, 70.1, 88.9),
        'MobileNet_v1_0.75_192': (233, 2.59, 67.2, 87.3, 66.1, 86.4),
        'MobileNet_v1_0.50_160': (77, 1.34, 59.1, 81.9, 57.7, 80.4),
        'MobileNet_v1_0.25_128': (14, 0.47, 41.5, 66.3, 39.5, 64.4),
    }
    by_label = {v.label: v for v in variants.VARIANTS}
    self.assertEqual(len(by_label), 16)
    for label, row in seed_rows.items():
      variant = by_label[label]
      self.assertEqual((variant.million_macs, variant.million_params,
                        variant.top1, variant.top5, variant.quant_top1,
                        variant.quant_top5), row, label)

  def test_the_eight_bit_models_lose_accuracy(self):
    for variant in variants.VARIANTS:
      self.assertLess(variant.quant_top1, variant.top1, variant.name)
      self.assertLess(variant.top1, variant.top5, variant.name)

  def test_release_names_and_urls(self):
    variant = variants.by_name('0.5_160')
    self.assertEqual(variant.release_name(quantized=True),
                     'mobilenet_v1_0.5_160_quant')
    self.assertEqual(
        variants.by_name('1.0_224').release_url(quantized=False),
        'http://download.tensorflow.org/models/mobilenet_v1_2018_08_02/'
        'mobilenet_v1_1.0_224.tgz')
    self.assertEqual(variants.release_name(0.35, 96, False),
                     'mobilenet_v1_0.35_96')
    self.assertEqual(variants.release_name(1, 224, True),
                     'mobilenet_v1_1.0_224_quant')
    self.assertEqual(variants.release_name(1, 224, False),
                     'mobilenet_v1_1.0_224')
    self.assertEqual(variants.release_name(0.50, 160, False),
                     'mobilenet_v1_0.5_160')
    self.assertEqual(variants.release_name(0.25, 128, True),
                     'mobilenet_v1_0.25_128_quant')

  def test_lookups(self):
    self.assertIs(variants.find(0.50, 160), variants.by_name('0.5_160'))
    self.assertIs(variants.find(1, 224), variants.VARIANTS[0])
    self.assertIsNone(variants.find(0.35, 224))
    with self.assertRaisesRegex(KeyError, '0.5_160'):
      variants.by_name('0.50_160')


if __name__ == '__main__':
  unittest.main()
