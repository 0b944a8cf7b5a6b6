"""The resolvers' side of bulk inputs: ``bulk_argument(info, name)`` is the raw value of a
bulk argument when the ``bulkinput`` accelerator (``app/accel/bulkinput.py``) took its
variable before coercion, else None, and the resolver reads the typed input as usual."""

from app.accel.bulkinput import bulk_argument

__all__ = ["bulk_argument"]
