"""Tests the one-line form of error messages."""

import unittest

from runtime import errors


class _OpError(Exception):
  """Stands in for tf.errors.OpError, which keeps its text in `message`."""

  def __init__(self, message):
    super().__init__('wrapped: ' + message)
    self.message = message


class FirstLineTest(unittest.TestCase):

  def test_graph_execution_error_keeps_the_message_without_the_trace(self):
    error = _OpError('Graph execution error:\n\nfoo.tfrecord; No such file '
                     'or directory\n\t [[{{node IteratorGetNext}}]]')
    self.assertEqual(errors.first_line(error),
                     'foo.tfrecord; No such file or directory')

  def test_assertion_gives_its_text(self):
    error = _OpError('assertion failed: [label 1001 is out of range] '
                     '[Condition x <= y did not hold]')
    self.assertEqual(errors.first_line(error), 'label 1001 is out of range')

  def test_op_trace_on_the_same_line_is_dropped(self):
    error = ValueError('Data loss: truncated record  [[node ReadRecord]]')
    self.assertEqual(errors.first_line(error), 'Data loss: truncated record')

  def test_message_of_several_lines(self):
    self.assertEqual(errors.first_line(ValueError('first\nsecond')), 'first')

  def test_no_message_gives_the_type(self):
    self.assertEqual(errors.first_line(IndexError()), 'IndexError')


if __name__ == '__main__':
  unittest.main()
