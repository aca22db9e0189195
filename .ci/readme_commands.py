"""Print the README's two set-up commands, one per line: the ```sh blocks of the section
"Set up and run" (first: install and run the main job; second: install and run the tests).

.ci/run runs exactly these, so the README and CI cannot drift apart; it exits non-zero
if the section does not hold exactly two one-line commands.
"""

import re
import sys
from pathlib import Path

text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
section = re.search(r"^## Set up and run\n(.*?)(?=^## )", text, re.S | re.M)
blocks = re.findall(r"^```sh\n(.*?)^```", section.group(1) if section else "", re.S | re.M)
commands = [b.strip() for b in blocks]
if len(commands) != 2 or any("\n" in c for c in commands):
    sys.exit(f"README 'Set up and run' must hold exactly two one-line sh commands: {commands}")
print("\n".join(commands))
