r"""Prints the MobileNet V1 variants' costs and accuracies, and charts them.

For each of the 16 width/resolution variants, shows the released models'
published figures (Million MACs, Million Parameters, top-1/top-5, float and
8-bit) beside the MACs and parameters counted from the graph our
`mobilenet_v1` builds, flags where the published figure differs, and with
--chart writes an accuracy-vs-MACs chart like the seed's mobilenet_v1.png.

  bazel run //:mobilenet_v1_table -- --chart=/tmp/mobilenet_v1.png
"""

import os

from absl import app
from absl import flags

from model import costs
from model import variants

FLAGS = flags.FLAGS
flags.DEFINE_string('chart', '',
                    'Where to write the accuracy-vs-MACs chart (PNG), e.g. '
                    '/tmp/mobilenet_v1.png; empty (the default) writes none. '
                    'Relative paths are under the directory the command was '
                    'started in.')


def format_table(computed):
  """Sets the published figures beside the computed ones.

  Args:
    computed: {variant name: (million MACs, million parameters)}, as
      `costs.computed_table` counts them.

  Returns:
    The table as text, one row per variant, with a note under it for each
    published MACs figure the architecture does not give.
  """
  header = ('%-22s %9s %9s %8s %8s %6s %6s %6s %6s' %
            ('Model', 'MACs(M)', 'ours', 'Params', 'ours', 'top1', 'top5',
             'q-top1', 'q-top5'))
  lines = [header, '-' * len(header)]
  flagged = []
  for variant in variants.VARIANTS:
    macs, params = computed[variant.name]
    mac_flag = '' if abs(macs - variant.million_macs) < 1 else ' *'
    if mac_flag:
      flagged.append('%s: published %d million MACs, the architecture gives '
                     '%.1f' % (variant.label, variant.million_macs, macs))
    lines.append('%-22s %9d %7.1f%-2s %8.2f %8.2f %6.1f %6.1f %6.1f %6.1f' %
                 (variant.label, variant.million_macs, macs, mac_flag,
                  variant.million_params, params, variant.top1, variant.top5,
                  variant.quant_top1, variant.quant_top5))
  lines.append('')
  lines.append('MACs include the 1001-class logits layer; parameters count '
               'conv weights, batch-norm scale/shift and logits biases.')
  if flagged:
    lines.append('* published figure differs from the architecture:')
    lines.extend('  ' + f for f in flagged)
  return '\n'.join(lines)


def write_chart(computed, path):
  """Plots top-1 accuracy against MACs (log scale), one line per width.

  Args:
    computed: {variant name: (million MACs, million parameters)}.
    path: the PNG file to write.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

  figure, axes = pyplot.subplots(figsize=(8, 5.5))
  for width in variants.WIDTHS:
    of_width = sorted((v for v in variants.VARIANTS
                       if v.depth_multiplier == width),
                      key=lambda v: v.resolution)
    macs = [computed[v.name][0] for v in of_width]
    axes.plot(macs, [v.top1 for v in of_width], 'o-',
              label='width %s, float' % width)
    axes.plot(macs, [v.quant_top1 for v in of_width], 'x--',
              color=axes.lines[-1].get_color(), alpha=0.6,
              label='width %s, 8-bit' % width)
    for variant, mac in zip(of_width, macs):
      axes.annotate(str(variant.resolution), (mac, variant.top1),
                    textcoords='offset points', xytext=(4, -10), fontsize=7)
  axes.set_xscale('log')
  axes.set_xticks([10, 20, 50, 100, 200, 500])
  axes.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  axes.set_xlabel('Million multiply-accumulates (log scale)')
  axes.set_ylabel('ImageNet top-1 accuracy (%)')
  axes.set_title('MobileNet V1: accuracy vs. computation '
                 '(labels: input resolution)')
  axes.grid(True, which='both', alpha=0.3)
  axes.legend(fontsize=8, ncol=2, loc='lower right')
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  pyplot.close(figure)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Unexpected arguments: %s' % ' '.join(argv[1:]))
  computed = costs.computed_table()
  print(format_table(computed))
  if FLAGS.chart:
    # `bazel run` starts us in the runfiles tree; write where the user is.
    path = os.path.join(os.environ.get('BUILD_WORKING_DIRECTORY', ''),
                        FLAGS.chart)
    write_chart(computed, path)
    print('\nChart written to %s' % os.path.abspath(path))
  else:
    print('\n--chart=PATH.png also draws accuracy against MACs.')


if __name__ == '__main__':
  app.run(main)
