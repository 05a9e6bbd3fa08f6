"""``python -m horovod_scalecom.check``: see horovod_scalecom.check."""

import sys

from horovod_scalecom.check.report import main

sys.exit(main())
