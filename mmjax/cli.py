"""Running a command-line script: a bad input is one clear line on stderr and exit status 2.

  if __name__ == "__main__":
    cli.run(main)          # instead of absl's app.run(main)

The library's input errors (ValueError and its kinds, KeyError, FileNotFoundError) already name
the manifest line, config key or flag at fault, so a traceback only hides that line; it is shown
with --debug, for when the error is the library's own.
"""

from __future__ import annotations

import sys

from absl import app, flags

_DEBUG = flags.DEFINE_bool("debug", False, "On an error, show the full traceback instead of one line.")

# What a user's input can cause; anything else is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, FloatingPointError)


def _one_line(error: BaseException) -> str:
  # KeyError's str() is the repr of its argument (quotes around the message).
  text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  return " ".join(str(text).split())


def run(main) -> None:
  def guarded(argv):
    try:
      return main(argv)
    except INPUT_ERRORS as e:
      if _DEBUG.value:
        raise
      print(f"error: {_one_line(e)} (--debug shows the traceback)", file=sys.stderr)
      sys.exit(2)

  app.run(guarded)
