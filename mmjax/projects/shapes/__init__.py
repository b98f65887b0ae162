"""The embedded shapes data's own project: the object encoder and the diagnostics built for it.

See README.md beside this file for what it is, how it was measured and its numbers.
"""
