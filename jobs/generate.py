"""Entry point for the generate stage: `python jobs/generate.py --config FILE [a.b=c ...]`.

Also runs as `ray job submit --working-dir . -- python jobs/generate.py --config FILE`.
"""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the package may not be installed: use the checkout's copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from embedforge.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
