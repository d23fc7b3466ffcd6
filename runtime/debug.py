"""MOBILENET_V1_DEBUG=1: everything shown, for bug reports.

tf_environment and slim_compat then let TensorFlow's logs, start-up banners
and deprecation warnings through, and cli shows the traceback of every error
instead of its one-line form. This module imports nothing heavy, so that cli
does not load TensorFlow: a binary can act before it loads (the trainer takes
its directory lock first).
"""

import os

ENABLED = os.environ.get('MOBILENET_V1_DEBUG', '') not in ('', '0')
