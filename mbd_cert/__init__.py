"""mbd-cert: Modality Deletion Certificates for multimodal models.

Public entry points are :func:`mbd_cert.verify.verify` and :func:`mbd_cert.issue.issue`.
The package version and the certificate format version are separate: a release may
change code without changing the format it writes.
"""

__version__ = "0.1.0"

# MAJOR.MINOR of the certificate format written by this release (SPEC.md, section 2).
FORMAT_VERSION = "1.1"
SUPPORTED_FORMAT_MAJOR = 1

__all__ = ["FORMAT_VERSION", "SUPPORTED_FORMAT_MAJOR", "__version__"]
