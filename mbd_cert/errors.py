"""Error types of mbd-cert, each with a stable code.

Three outcomes stay distinct because CI pipelines act on them differently:

* :class:`InputError` and its subclasses: the input cannot be used (missing file,
  malformed JSON, bad key, unsupported version). The CLI exits 2.
* :class:`VerificationFailed` and its subclasses: the input is well formed but a claim
  in it is false. The CLI exits 1.
* :class:`IssuanceError`: the issuer refuses to write a certificate. The CLI exits 1
  unless the cause is bad input (then an :class:`InputError` is raised instead).

Any other exception that escapes ``issue()`` or ``verify()`` is a bug (exit 3).

Codes are listed in SPEC.md ("Error codes") and are never reused for another meaning.
"""

from __future__ import annotations

# mbd-cert is installed from a checkout or from a wheel built there. It is not on the
# Python Package Index, so no hint may tell users to install it by name from an index.
# mbd-cert may come from a checkout or from a package or git URL (a CI job), so the
# hint names the extra in both forms.
TORCH_EXTRA_HINT = ("install mbd-cert with its torch extra: 'mbd-cert[torch]' where you "
                    "install it from a package or git URL, or pip install -e '.[torch]' "
                    "in a checkout (README.md explains the GPU build)")
TEXT_EXTRA_HINT = ("install mbd-cert with its text extra: 'mbd-cert[text]' where you "
                   "install it from a package or git URL, or pip install -e '.[text]' "
                   "in a checkout")


class MbdCertError(Exception):
    """Base class of every error mbd-cert raises on purpose.

    Attributes:
        code: Stable identifier such as ``E_DIGEST_MISMATCH``.
        hint: What the user can do next, or an empty string.
    """

    code = "E_MBD_CERT"
    exit_code = 3

    def __init__(self, message: str, *, hint: str = "", code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


# Unusable input: exit code 2.


class InputError(MbdCertError):
    """A file, key or argument cannot be used as given."""

    code = "E_INPUT"
    exit_code = 2


class FileMissing(InputError):
    """A file named by the user or by the certificate does not exist."""

    code = "E_FILE_MISSING"


class UnsafePath(InputError):
    """An artefact path escapes its directory, is absolute, or is a symbolic link."""

    code = "E_UNSAFE_PATH"


class KeyInvalid(InputError):
    """A key file is not a key of the expected kind."""

    code = "E_KEY_INVALID"


class MalformedSafetensors(InputError):
    """A file is not a well-formed safetensors file."""

    code = "E_SAFETENSORS_MALFORMED"


class MalformedData(InputError):
    """A data file (corpus, probe set) is not in the expected layout."""

    code = "E_DATA_MALFORMED"


class MalformedCertificate(InputError):
    """The certificate is not valid JSON or violates the schema."""

    code = "E_CERT_MALFORMED"


class UnsupportedVersion(InputError):
    """The certificate declares a format major version this release cannot read."""

    code = "E_UNSUPPORTED_VERSION"


class LimitExceeded(InputError):
    """An input is larger than a documented cap (file size, tensor count, nesting)."""

    code = "E_LIMIT_EXCEEDED"


# The issuer refuses: exit code 1.


class IssuanceError(MbdCertError):
    """The issuer refuses to issue a certificate (budget, empty deletion, ...)."""

    code = "E_ISSUANCE"
    exit_code = 1


# A claim is false: exit code 1.


class VerificationFailed(MbdCertError):
    """A well-formed certificate makes a claim that does not hold."""

    code = "E_VERIFICATION_FAILED"
    exit_code = 1


class SignatureInvalid(VerificationFailed):
    """The signature does not verify under any trusted key."""

    code = "E_SIGNATURE_INVALID"


class UntrustedKey(VerificationFailed):
    """The certificate names an issuer key the user did not supply."""

    code = "E_KEY_UNTRUSTED"


class DigestMismatch(VerificationFailed):
    """A digest recomputed from a file differs from the committed one."""

    code = "E_DIGEST_MISMATCH"


class DeletionIncomplete(VerificationFailed):
    """A tensor of the deleted modality's encoder is not all zero."""

    code = "E_DELETION_INCOMPLETE"


class ModelNonfinite(VerificationFailed):
    """A model contains NaN or infinite weights.

    Either the released model (R-DEL-3) or the pre-deletion one rebuilt from the diff
    (R-L2-1).
    """

    code = "E_MODEL_NONFINITE"


class CalibrationInvalid(VerificationFailed):
    """The stated sigma does not give the stated (epsilon, delta) for the sensitivity."""

    code = "E_CALIBRATION_INVALID"


class PolicyViolation(VerificationFailed):
    """The certificate breaks the user's policy (for example max epsilon)."""

    code = "E_POLICY_VIOLATION"


# The hint of every policy violation, which verify-repo prints on a line of its own. The
# policy check also runs after a failed signature check, so it does not call the
# certificate valid.
POLICY_VIOLATION_HINT = (
    "the certificate is outside the policy, and the other checks show whether it is "
    "valid: ask for a deletion issued within the policy, with a smaller --epsilon or "
    "--delta or the required sensitivity method, or change the limit where the policy "
    "is set")


class ChainBroken(VerificationFailed):
    """The chain of earlier certificates is not a valid sequence."""

    code = "E_CHAIN_BROKEN"


class ChainLinkMissing(VerificationFailed):
    """A certificate names a previous certificate that cannot be found."""

    code = "E_CHAIN_LINK_MISSING"


class SealedBundleInvalid(VerificationFailed):
    """The sealed audit bundle does not authenticate under the recipient's key."""

    code = "E_SEALED_BUNDLE_INVALID"


class StatisticalCheckFailed(VerificationFailed):
    """A statistical test rejected the certificate's claim."""

    code = "E_STATISTICAL_CHECK_FAILED"
