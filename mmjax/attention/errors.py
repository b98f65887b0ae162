"""The error every attention backend raises when it cannot serve a request."""


class UnsupportedAttention(ValueError):
  """The requested implementation cannot compute this attention (shape, dtype, mask or platform)."""
