"""Tests for progress."""

import io

from absl.testing import absltest

from data import progress


class _Terminal(io.StringIO):

  def isatty(self):
    return True


class ProgressBarTest(absltest.TestCase):

  def test_log_file_gets_whole_lines(self):
    stream = io.StringIO()
    bar = progress.ProgressBar(4, 'Writing', stream=stream)
    # Drawn at most every 10 s when not a terminal: only the final state.
    bar.update(1)
    bar.close(4)
    line, = stream.getvalue().splitlines()
    self.assertRegex(line, r'^Writing \[#{30}\] 4/4 100% \d+ images/s ETA 0s$')
    self.assertTrue(stream.getvalue().endswith('\n'))

  def test_terminal_redraws_one_line(self):
    stream = _Terminal()
    bar = progress.ProgressBar(4, 'Writing', stream=stream)
    bar.update(2, force=True)
    bar.close(4)
    self.assertRegex(
        stream.getvalue(),
        r'^\rWriting \[#{15}\.{15}\] 2/4  50% .*\rWriting \[#{30}\] 4/4 '
        r'100% .*\n$')

  def test_empty_total_does_not_divide_by_zero(self):
    stream = io.StringIO()
    progress.ProgressBar(0, 'Writing', stream=stream).close(0)
    self.assertIn(' 0/1   0% ', stream.getvalue())


if __name__ == '__main__':
  absltest.main()
