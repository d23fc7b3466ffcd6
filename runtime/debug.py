"""MOBILENET_V1_DEBUG=1: everything shown, for bug reports.

slim_compat then lets TensorFlow's logs, start-up banners and deprecation
warnings through, and cli shows the traceback of every error instead of its
one-line form. This module imports nothing heavy, so that cli does not load
TensorFlow: a binary can act before it loads (the trainer sets oneDNN's math
mode and takes its directory lock first).
"""

import os

ENABLED = os.environ.get('MOBILENET_V1_DEBUG', '') not in ('', '0')
