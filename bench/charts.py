r"""Draws the docs' charts from the measurements in bench/results/*.csv.

Every chart in README.md and docs/ comes from here, and every value it
plots is a row of bench/results/ (see bench/results/README.md for what
each file holds and the command that produced each row):

  variants.png      published float and 8-bit top-1 of the 16 released
                    variants against the MACs counted from our graph
                    (variants.csv).
  qat_top1.png      top-1 of the released 1.0_224 on the real-image split:
                    float, post-training int8 and quantization-aware
                    (qat.csv, rows with status `current`).
  train_speed.png   training images/s of ours against the peers, one panel
                    per table (task, CPU, precision, date): float32 and
                    mixed bfloat16 training and the QAT fine-tune
                    (train_speed.csv).

  .venv/bin/python bench/charts.py
  .venv/bin/python bench/charts.py --results_dir=bench/results \
      --output_dir=docs/images

Needs matplotlib (pinned in requirements.txt); no TensorFlow.
"""

import argparse
import csv
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WIDTH_COLOURS = {'1.0': '#1f77b4', '0.75': '#ff7f0e', '0.5': '#2ca02c',
                  '0.25': '#d62728'}


def read_rows(results_dir, name):
  """The rows of bench/results/NAME as dicts of strings."""
  with open(os.path.join(results_dir, name), newline='') as f:
    return list(csv.DictReader(f))


def variants_chart(results_dir, path):
  """Published float and 8-bit top-1 against computed MACs, per width."""
  rows = read_rows(results_dir, 'variants.csv')
  fig, axes = plt.subplots(figsize=(8, 5.5))
  for width, colour in _WIDTH_COLOURS.items():
    group = sorted((r for r in rows if r['depth_multiplier'] == width),
                   key=lambda r: float(r['computed_mmacs']))
    macs = [float(r['computed_mmacs']) for r in group]
    axes.plot(macs, [float(r['published_float_top1']) for r in group], 'o-',
              color=colour, label='%s float' % width)
    axes.plot(macs, [float(r['published_8bit_top1']) for r in group], 'x--',
              color=colour, alpha=0.8, label='%s 8-bit' % width)
    # 0.75's labels go below its line, clear of 0.5 and 1.0 at similar MACs.
    offset = (2, -13) if width == '0.75' else (-8, 6)
    for r, mac in zip(group, macs):
      axes.annotate(r['image_size'], (mac, float(r['published_float_top1'])),
                    textcoords='offset points', xytext=offset, fontsize=8,
                    color=colour)
  axes.set_xscale('log')
  axes.set_xticks([15, 30, 50, 100, 200, 300, 600])
  axes.set_xticklabels(['15', '30', '50', '100', '200', '300', '600'])
  axes.set_xlabel('million MACs (counted from the graph, 1001-class logits '
                  'included; log scale)')
  axes.set_ylabel('ImageNet top-1 (%), published')
  axes.set_title('MobileNet V1 variants: width x resolution '
                 '(labels: resolution)')
  axes.grid(True, which='major', alpha=0.3)
  axes.legend(title='width', ncol=2, fontsize=8, loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# qat.csv rows drawn, in order, with their labels.
_QAT_BARS = (
    ('float', '', 'float (released checkpoint)'),
    ('ptq_int8', '', 'post-training int8'),
    ('ours_int8', 'f17e1e9', 'QAT per-channel int8\n(--quantize=True, default)'),
    ('ours_uint8', '575b371', 'QAT per-tensor uint8\n(--weight_quantization=\nasymmetric)'),
)


def qat_chart(results_dir, path):
  """Top-1 of the released 1.0_224's float, PTQ and QAT models."""
  rows = [r for r in read_rows(results_dir, 'qat.csv')
          if r['status'] == 'current']
  picked = []
  for run, commit, label in _QAT_BARS:
    match = [r for r in rows if r['run'] == run and
             (not commit or r['commit'] == commit)]
    picked.append((label, match[0]))
  peer = [r for r in rows if r['run'] == 'peer_int8' and r['top1_odd']][-1]
  fig, axes = plt.subplots(figsize=(8, 4.8))
  halves = (('top1_odd', 'odd classes held out', '#9ecae1'),
            ('top1_even', 'even classes held out', '#4292c6'),
            ('top1_all', 'all 1,000 held-out images', '#08306b'))
  height = 0.26
  for i, (key, name, colour) in enumerate(halves):
    ys = [j + (i - 1) * height for j in range(len(picked))]
    values = [float(r[key]) for _, r in picked]
    axes.barh(ys, values, height=height, color=colour, label=name)
    for y, v in zip(ys, values):
      axes.text(v + 0.1, y, '%.1f' % v, va='center', fontsize=8)
  axes.set_yticks(range(len(picked)))
  axes.set_yticklabels([label for label, _ in picked], fontsize=9)
  axes.invert_yaxis()
  axes.set_xlim(85, 97)
  axes.set_xlabel('top-1 (%) of the .tflite on ImageNet images of classes '
                  'the fine-tune never saw (axis from 85%)', fontsize=9)
  axes.set_title('Released MobileNet V1 1.0_224: 8-bit models against float'
                 '\n(300 steps of batch 16; peer tfmot QAT int8, odd half: '
                 '%.1f%%)' % float(peer['top1_odd']), fontsize=10)
  axes.legend(fontsize=8, loc='lower right')
  axes.grid(True, axis='x', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


_PEER_LABELS = {
    'ours': 'ours (mobilenet_v1_train)',
    'ours_default_allocator': "ours on TensorFlow's default CPU allocator",
    'slim': 'plain tf-slim graph',
    'tf_keras': 'tf_keras MobileNet fit',
    'keras3': 'Keras 3 MobileNet fit',
    'torch': 'PyTorch timm mobilenetv1_100',
    'ours_int8': 'ours, per-channel int8 (default)',
    'ours_int8_distilled': 'ours, per-channel, distilled',
    'ours_uint8': 'ours, per-tensor uint8',
    'peer_int8': 'tfmot quantize_model fit',
}


_TASK_LABELS = {
    'QAT fine-tune of the released 1.0_224 (real images)':
        'QAT fine-tune of the released model',
    'float training': 'Float training',
}
_CPU_LABELS = {'Intel(R) Xeon(R) Processor': 'Intel Xeon'}


def _cpu_kind(row):
  """The CPU and its widest matrix arithmetic, from a row's model and notes.

  lscpu names AMD's Zen 3 and Zen 4 alike ('AMD EPYC'); the bench's notes
  say which vector extensions the machine had.
  """
  cpu = _CPU_LABELS.get(row['cpu_model'], row['cpu_model'])
  notes = row['notes']
  if 'AMX' in notes and 'no AMX' not in notes:
    return cpu + ' with AMX'
  if 'AVX512-BF16' in notes:
    return cpu + ' (AVX512-BF16)'
  if 'AVX2' in notes:
    return cpu + ' (AVX2)'
  return cpu


def _peer_label(row):
  """A train_speed.csv row's bar label: the peer, and the QAT half."""
  label = _PEER_LABELS.get(row['peer'], row['peer'])
  if row['task'].startswith('QAT step') and row['peer'] == 'tf_keras':
    label = _PEER_LABELS['peer_int8']
  for half in ('odd half', 'even half'):
    if half in row['notes']:
      label += ', ' + half
  return label


def train_speed_chart(results_dir, path):
  """Images/s of ours and the peers, one panel per table of the bench.

  Each table (task, CPU kind, precision) is drawn from its latest run only:
  the rows are in the order they were measured.
  """
  rows = [r for r in read_rows(results_dir, 'train_speed.csv')
          if r['images_per_s'] and not r['notes'].startswith('superseded')]

  def table(row):
    return row['task'], _cpu_kind(row), row['precision']

  latest_run = {table(r): (r['date'], r['commit']) for r in rows}
  rows = [r for r in rows if (r['date'], r['commit']) == latest_run[table(r)]]
  panels = []
  for r in rows:
    key = table(r)
    if key not in [p[0] for p in panels]:
      panels.append((key, [x for x in rows if table(x) == key]))
  fig, axes_list = plt.subplots(len(panels), 1,
                                figsize=(9, 1.1 + 0.42 * len(rows)),
                                gridspec_kw={'height_ratios':
                                             [len(p[1]) for p in panels]})
  top = max(float(r['images_per_s']) for r in rows)
  for axes, ((task, cpu, precision), group) in zip(axes_list, panels):
    names = [_peer_label(r) for r in group]
    values = [float(r['images_per_s']) for r in group]
    colours = ['#08519c' if r['peer'].startswith('ours') else '#bdbdbd'
               for r in group]
    axes.barh(range(len(group)), values, color=colours)
    ours = values[0]
    for y, (r, v) in enumerate(zip(group, values)):
      # Each peer against the ours row above it (a panel may hold one pair
      # per QAT half).
      if r['peer'].startswith('ours'):
        ours = v
      ratio = v / ours if not r['peer'].startswith('ours') else None
      text = '%.1f' % v + ('  (%.2fx ours)' % ratio if ratio else '')
      axes.text(v + top * 0.01, y, text, va='center', fontsize=8)
    axes.set_yticks(range(len(group)))
    axes.set_yticklabels(names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, top * 1.35)
    batch = group[0]['batch_size']
    # The QAT rows train at the trainer's default precision.
    precision_text = '' if precision == 'default' else ', ' + precision
    axes.set_title('%s, %s, batch %s%s — %s, %s cores, %s' %
                   (_TASK_LABELS.get(task, task), group[0]['model'], batch,
                    precision_text, cpu, group[0]['cores'], group[0]['date']),
                   fontsize=8.5, loc='left')
    axes.grid(True, axis='x', alpha=0.3)
  axes_list[-1].set_xlabel('training images/s (higher is better)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--results_dir',
                      default=os.path.join(_ROOT, 'bench', 'results'),
                      help='Where the CSV files are (default: bench/results '
                           'of this checkout).')
  parser.add_argument('--output_dir',
                      default=os.path.join(_ROOT, 'docs', 'images'),
                      help='Where the PNG files go (default: docs/images of '
                           'this checkout); created if missing.')
  args = parser.parse_args()
  os.makedirs(args.output_dir, exist_ok=True)
  for name, draw in (('variants.png', variants_chart),
                     ('qat_top1.png', qat_chart),
                     ('train_speed.png', train_speed_chart)):
    path = os.path.join(args.output_dir, name)
    draw(args.results_dir, path)
    print('wrote', os.path.relpath(path))


if __name__ == '__main__':
  main()
