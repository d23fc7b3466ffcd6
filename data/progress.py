"""A one-line progress bar for long conversions."""

import sys
import time


class ProgressBar(object):
  """A one-line progress bar on stderr (a line every 10 s when not a tty)."""

  def __init__(self, total, description, stream=None):
    """Starts the clock of the bar.

    Args:
      total: the number of items to do.
      description: the text before the bar.
      stream: where the bar is drawn; stderr by default.
    """
    self._total = max(total, 1)
    self._description = description
    self._stream = stream or sys.stderr
    self._is_tty = self._stream.isatty()
    self._min_interval = 0.2 if self._is_tty else 10.0
    self._start = time.time()
    self._last_draw = self._start

  def update(self, done, force=False):
    """Redraws the bar if enough time has passed since the last drawing.

    Args:
      done: the number of finished items.
      force: draw whatever the time.
    """
    now = time.time()
    if not force and now - self._last_draw < self._min_interval:
      return
    self._last_draw = now
    elapsed = max(now - self._start, 1e-6)
    rate = done / elapsed
    remaining = (self._total - done) / rate if rate > 0 else 0
    width = 30
    filled = int(width * done / self._total)
    line = '%s [%s%s] %d/%d %3d%% %.0f images/s ETA %ds' % (
        self._description, '#' * filled, '.' * (width - filled), done,
        self._total, 100 * done // self._total, rate, remaining)
    if self._is_tty:
      self._stream.write('\r' + line)
    else:
      self._stream.write(line + '\n')
    self._stream.flush()

  def close(self, done):
    """Draws the final state and ends the line.

    Args:
      done: the number of finished items.
    """
    self.update(done, force=True)
    self.end_line()

  def end_line(self):
    """Ends the bar's line on a tty, so that what follows starts its own."""
    if self._is_tty:
      self._stream.write('\n')
      self._stream.flush()
