"""``python -m trials.toyworld build|check``: see trials.toyworld.build."""

from trials.toyworld.build import main

main()
