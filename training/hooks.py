"""Session hooks of the training loop: progress lines and signal handling."""

import math
import signal
import time

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from runtime import errors

tf1 = tf.compat.v1


def skipped_records_note(skipped_records):
  """', N corrupt records skipped' once --skip_corrupt_records skipped some.

  Args:
    skipped_records: the records.SkippedRecordCounter the training dataset
      counts its skipped records in.

  Returns:
    The note, or '' when no record was skipped.
  """
  skipped = skipped_records.count
  return ', %d corrupt records skipped' % skipped if skipped else ''


def format_duration(seconds):
  """'H:MM:SS' of a number of seconds (negative ones count as 0)."""
  seconds = int(max(seconds, 0))
  return '%d:%02d:%02d' % (seconds // 3600, seconds // 60 % 60, seconds % 60)


class ProgressHook(tf1.train.SessionRunHook):
  """Prints step, loss, learning rate, images/sec and ETA every N steps."""

  def __init__(self, loss, learning_rate, global_step, batch_size,
               every_n_steps, last_step, skipped_records):
    """Reports on the first step and every `every_n_steps` after it.

    Args:
      loss: the total loss tensor.
      learning_rate: the learning rate tensor.
      global_step: the global step variable.
      batch_size: images per step, for the speed.
      every_n_steps: steps between reports.
      last_step: the step training stops at (reported, and the ETA's
        goal), or None for an open-ended run.
      skipped_records: the records.SkippedRecordCounter of the training
        dataset, reported once it counts any.
    """
    self._fetches = {'loss': loss, 'learning_rate': learning_rate,
                     'step': global_step}
    self._batch_size = batch_size
    self._every_n_steps = every_n_steps
    self._last_step = last_step
    self._skipped_records = skipped_records
    self._mark = None  # (time, step) at the last report

  def before_run(self, run_context):
    return tf1.train.SessionRunArgs(self._fetches)

  def after_run(self, run_context, run_values):
    results = run_values.results
    step = results['step'] + 1  # the step just run
    if not math.isfinite(results['loss']):
      raise errors.UserError('loss became %s at step %d; lower '
                             '--learning_rate' % (results['loss'], step))
    first = self._mark is None
    if not first and step % self._every_n_steps and step != self._last_step:
      return
    now = time.time()
    line = 'step %d  loss %.4f  lr %.3g' % (step, results['loss'],
                                            results['learning_rate'])
    line += skipped_records_note(self._skipped_records)
    # The first step includes graph optimization: speed is measured after it.
    if not first:
      elapsed, steps = now - self._mark[0], step - self._mark[1]
      if steps > 0 and elapsed > 0:
        rate = steps / elapsed
        line += '  %.1f images/s' % (rate * self._batch_size)
        if self._last_step:
          line += '  ETA %s' % format_duration(
              (self._last_step - step) / rate)
    self._mark = (now, step)
    print(line, flush=True)


class SignalStopHook(tf1.train.SessionRunHook):
  """Ends training at the next step boundary after SIGINT or SIGTERM.

  The first signal only sets `received`: the step under way completes, the
  loop stops and the session closes as at the last step, where the chief's
  checkpoint hook saves at the current step. It also restores the signals'
  default action, so that a second one ends the process at once.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.received = None

  def begin(self):
    for signum in self.SIGNALS:
      signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame  # unused
    self.received = signum
    for other in self.SIGNALS:
      signal.signal(other, signal.SIG_DFL)

  def after_run(self, run_context, run_values):
    if self.received:
      run_context.request_stop()
